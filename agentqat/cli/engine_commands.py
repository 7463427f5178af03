"""The commands that work through llama.cpp's own tools: `engines` (which engines this machine has, where, which
version), `engine-eval` (a GGUF file, or a stock llama-quantize recipe, measured by llama-perplexity against
the base model) and `fold-awq` (a model directory with AWQ's scales folded in, for any GGUF type to quantize).
Bad input raises UserError."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def cmd_engines(args: argparse.Namespace) -> int:
    """Lists the engines found on this machine (llama.cpp's pinned tools, vLLM), their versions and paths, and how
    to get a missing one; `--build` builds the pinned llama.cpp first (once, about 8 minutes on 2 cores)."""
    from agentqat import ui
    from agentqat.engines import engines_found
    from agentqat.engines.llama_cpp import build_llama_cpp

    if args.build:
        build_llama_cpp(ui.PhaseView())
    found = engines_found()
    if args.json:
        print(json.dumps([engine.as_dict() for engine in found], indent=2))
    else:
        ui.print_engines(found)
    return 0


def cmd_engine_eval(args: argparse.Namespace) -> int:
    """Measures a GGUF file with llama.cpp itself: mean KL to the base model, same-top-token rate and perplexity
    from `llama-perplexity --kl-divergence` on a split of the corpus or a text file, with the file's bytes and bits
    per weight. `--stock TYPE` first makes llama.cpp's stock recipe of the model with the project's own
    llama-quantize (`--imatrix`: with an importance matrix from the calibration split). `--reference MODEL` measures
    against another model's logits (a folded model against the one it was folded from). Builds llama.cpp, converts
    the base model to GGUF and computes its logits on first use (phases)."""
    from agentqat import ui
    from agentqat.engines.measure import EngineWorkspace
    from agentqat.errors import UserError

    if (args.file is None) == (args.stock is None):
        raise UserError("name one GGUF file or --stock TYPE", "agentqat engine-eval FILE.gguf, or --stock IQ4_NL [--imatrix]")
    if args.imatrix and args.stock is None:
        raise UserError("--imatrix goes with --stock (a file of yours was quantized as it was)", "drop --imatrix or add --stock TYPE")
    if args.chunks < 1:
        raise UserError(f"--chunks {args.chunks}: at least 1 chunk", "pass --chunks 16")
    view = ui.PhaseView()
    workspace = EngineWorkspace(args.model, args.corpus, view)
    model_file = workspace.stock(args.stock, args.imatrix) if args.stock else Path(args.file)
    reference = EngineWorkspace(args.reference, args.corpus, view) if args.reference else workspace
    figures = reference.measure(model_file, args.text, args.chunks, args.context)
    report = figures.as_dict() | ({"stock": args.stock.upper(), "imatrix": args.imatrix} if args.stock else {})
    report |= {"reference": args.reference} if args.reference else {}
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        ui.print_engine_eval(report)
    return 0


def cmd_fold_awq(args: argparse.Namespace) -> int:
    """Writes the arena's model with AWQ's scales folded into its norms and up projections (`agentqat.quant.awq_fold`)
    as a Hugging Face directory (and the scales, which llama.cpp's base file of it is made with): the same function, weights that round into `--type` with less error. The scales come
    from the arena's calibration windows; `--model` folds another model with them (e.g. gemma3-270m). Quantize the directory with any GGUF tool: `agentqat engine-eval --model DIR
    --stock IQ4_NL --imatrix --reference MODEL`, or an arena whose model is DIR. Records every group's alpha and proxy
    errors in DIR/awq-fold.json."""
    from safetensors.torch import save_file

    from agentqat import ui
    from agentqat.arena.config import load_arena
    from agentqat.arena.match import Workbench
    from agentqat.engines.gguf_fold import FOLD_RECORD, FOLD_SCALES
    from agentqat.errors import UserError
    from agentqat.quant.awq_fold import FOLD_TYPES, fold_awq

    type_name = args.type.upper()
    if type_name not in FOLD_TYPES:
        raise UserError(f"--type {args.type}: AWQ folds for the 32-wide types without a minimum", f"use one of {', '.join(FOLD_TYPES)}")
    if args.out.exists() and (not args.out.is_dir() or any(args.out.iterdir())):
        raise UserError(f"--out {args.out} is a file or a directory that is not empty", "name a new directory")
    arena = load_arena(args.arena)
    if args.model is not None:  # the arena's calibration (corpus, windows, seed) on another model
        arena = arena.model_copy(update={"model": args.model})
    view = ui.PhaseView()
    bench = Workbench(arena, reporter=view)
    calibration = bench.calibration(arena.calibration_windows)
    records, scales = fold_awq(bench.loaded.model, calibration.stats, type_name, view)
    args.out.mkdir(parents=True, exist_ok=True)
    bench.loaded.model.save_pretrained(args.out)
    bench.loaded.tokenizer.save_pretrained(args.out)
    save_file({name: values.contiguous() for name, values in scales.items()}, str(args.out / FOLD_SCALES))
    summary = {"model": arena.model, "arena": arena.name, "type": type_name, "calibration_windows": arena.calibration_windows,
               "window_tokens": arena.window_tokens, "groups": records}  # fmt: skip
    (args.out / FOLD_RECORD).write_text(json.dumps(summary, indent=2) + "\n")
    folded = sum(record["alpha"] > 0 for record in records)
    print(f"folded AWQ scales into {folded} of {len(records)} groups for {type_name}: {args.out}")
    return 0
