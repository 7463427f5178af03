"""The commands that take a strategy out of the tool: `export` (a model directory an engine loads), `engine-costs`
(what the deploy target's engine spends per scheme) and `transfer` (the strategy carried to another model). Bad
input raises UserError."""

from __future__ import annotations

import argparse
from pathlib import Path

from agentqat.cli.commands import strategy_document
from agentqat.errors import UserError


def cmd_export(args: argparse.Namespace) -> int:
    """Writes a strategy's quantized model in a format an engine loads, quantized by the arena's own code so that
    its weights are the ones the arena scored, with agentqat-export.json (strategy, arena figures, effective bits,
    bytes written). compressed-tensors: packed integer codes and scales that vLLM serves (W4A16, W8A8, ...);
    fake-quant: the dequantized weights as float32 safetensors, the arena's quality but none of the memory gain.
    A strategy the format (or, with --deploy, its engine) cannot hold is an error naming the modules and why.
    `--polished DIR` exports a polish (agentqat polish): its strategy with the trained weights and grids.
    `--model M` quantizes on another model with the arena's settings (its ladder built for M, no file budget): a
    strategy carried there by `agentqat transfer`."""
    from agentqat import ui
    from agentqat.arena.config import DEFAULT_ARENA, load_arena
    from agentqat.export import best_of_run, check_destination, export, polished_of, prepare_source
    from agentqat.strategy.deploy import missing_here
    named = [args.strategy is not None, args.run_dir is not None, args.polished is not None]
    if sum(named) != 1 or args.best != (args.run_dir is not None) or (args.max_bits is not None and not args.best):
        raise UserError("name the strategy one way: RUN_DIR --best [--max-bits X], --strategy S.json or --polished DIR", "see agentqat export --help")
    if args.model is not None and args.polished is not None:
        raise UserError("--model with --polished: a polish's trained weights are its arena's model's", "export the polish without --model")
    check_destination(args.format, args.out, args.deploy)
    if args.strategy is not None:
        document, arena, figures = strategy_document(args.strategy), load_arena(args.arena or DEFAULT_ARENA), {}
    elif args.polished is not None:
        document, arena_name, figures = polished_of(Path(args.polished))
        arena = load_arena(args.arena or arena_name)
    else:
        document, arena, figures = best_of_run(Path(args.run_dir), args.max_bits)
        arena = load_arena(args.arena) if args.arena else arena
    if args.model is not None:
        arena, figures = arena.on_model(args.model, keep_levels=True), {}  # the arena's figures are its own model's
    source = prepare_source(document, arena, reporter=ui.PhaseView(), figures=figures, polished=Path(args.polished) if args.polished else None)
    out = export(source, args.format, args.out, args.deploy)
    print(f"exported {document.get('name', 'strategy')} as {args.format} to {out} (see {out / 'agentqat-export.json'})")
    for scheme, why in missing_here((module.config for module in source.modules.values()), args.deploy).items():
        print(f"note: this machine cannot serve its {scheme} modules ({why}); serve it where {args.deploy} has them")
    return 0


def cmd_engine_costs(args: argparse.Namespace) -> int:
    """Prints the decode latency, time to first token and peak memory of each scheme of a vLLM deployment target
    (bf16, W4A16, W8A8, ...), each measured once on the real engine with a uniform model of the arena's model and
    cached; under that target, evolve reads a strategy's latency and memory from them (the parameter-weighted mean
    over its modules' schemes) and the arena's [score] latency and memory weigh them."""
    from agentqat import ui
    from agentqat.arena.config import load_arena
    from agentqat.arena.engine_costs import load_profile, profile_path
    from agentqat.export.measure_costs import measure_profile

    arena = load_arena(args.arena)
    profile = None if args.remeasure else load_profile(args.deploy, arena.model)
    if profile is None:
        profile = measure_profile(args.deploy, arena, reporter=ui.PhaseView(), keep=args.keep)
    ui.print_engine_costs(profile, profile_path(args.deploy, arena.model))
    return 0


def cmd_transfer(args: argparse.Namespace) -> int:
    """Carries a strategy found on one model to another by relative depth (agentqat.strategy.transfer): each target layer
    takes the configs of the source layer at the same depth, role by role; group sizes the target's shapes do not
    allow are repaired. Writes the new strategy file; `agentqat quantize --strategy OUT --model TO` scores it."""
    from agentqat.models import load_facts
    from agentqat.rundir.store import write_json_atomic
    from agentqat.strategy.transfer import transfer

    moved = transfer(strategy_document(args.strategy), load_facts(args.source), load_facts(args.target))
    write_json_atomic(args.out, moved.document)
    print(f"{args.strategy} ({args.source}: {moved.source_bits:.3f} bits per weight) -> {args.out} "
          f"({args.target}: {moved.target_bits:.3f} bits per weight); {moved.repaired} module(s) repaired"
          + (f"; roles the source lacks, given its layer's most common config: {', '.join(moved.missing_roles)}" if moved.missing_roles else ""))  # fmt: skip
    return 0
