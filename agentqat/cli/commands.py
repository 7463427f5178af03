"""The commands: each `cmd_*` turns parsed arguments into one session (or library) call and hands the result
to `ui` to print. Bad input raises UserError; `agentqat.cli.main` prints it as one line with exit code 2."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

from agentqat import defaults
from agentqat.cli.device_options import load_placed, on_device
from agentqat.errors import UserError
from agentqat.rundir.paths import ABLATION_FILE, MANIFEST_FILE, RUNS_DIR


def _quiet_libraries() -> None:
    """Silences the progress bars and notices that libraries print on every model load, through their
    environment variables: nothing heavy is imported before the first screen."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TQDM_DISABLE", "1")  # transformers' GGUF conversion bar: the phase view shows it instead
    # bitsandbytes warns on import that an optional hub-downloaded CPU kernel is missing; it has a fallback.
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)


def cmd_info(args: argparse.Namespace) -> int:
    """Prints the model's and corpus's facts and the base model's perplexity on the evaluation split."""
    import torch

    from agentqat import ui
    from agentqat.arena.quality import perplexity
    from agentqat.data import SPLITS, load_corpus, sample_windows, tokenize

    torch.set_num_threads(defaults.TORCH_THREADS)
    corpus = load_corpus(args.corpus)
    loaded, where = load_placed(args)
    split_tokens = {split: len(tokenize(loaded.tokenizer, corpus.split(split))) for split in SPLITS}
    eval_ids = tokenize(loaded.tokenizer, corpus.evaluation)
    windows = sample_windows(eval_ids, args.window_tokens, args.windows, args.seed, bos=loaded.bos.window_token)
    started = time.perf_counter()
    base_ppl = perplexity(loaded.model, windows, sequential=where.sequential)
    report = {
        "model": ui.facts_dict(loaded.facts, loaded.directory),
        "corpus": {"name": corpus.name, "source": corpus.source, "tokens": split_tokens},
        "bos": {"windows_open_with_bos": loaded.bos.add, "token_id": loaded.bos.token_id, "decided_by": loaded.bos.source},
        "base_perplexity": {
            "value": base_ppl,
            "split": "evaluation",
            "windows": args.windows,
            "window_tokens": args.window_tokens,
            "seed": args.seed,
            "seconds": time.perf_counter() - started,
        },
    }
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        ui.print_info(report, loaded.facts)
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    """Checks strategy files against the schema, a model and (--deploy) an engine's kernels; exit code 0 when all
    are valid, 2 otherwise."""
    from agentqat import ui
    from agentqat.models import load_facts
    from agentqat.strategy import deploy
    from agentqat.strategy.document import StrategyError, load_strategy
    from agentqat.strategy.resolve import resolve_strategy

    facts = load_facts(args.model)
    failures = 0
    for path in args.strategies:
        try:
            resolved = resolve_strategy(load_strategy(path), facts)
        except StrategyError as error:
            failures += 1
            ui.print_invalid(path, error.lines)
            continue
        unservable = deploy.problems(resolved, facts, args.deploy)
        if unservable:
            failures += 1
            ui.print_invalid(path, [f"not servable on {args.deploy}: {line}" for line in unservable])
        else:
            ui.print_valid(path, resolved, facts)
    return 2 if failures else 0


def cmd_quantize(args: argparse.Namespace) -> int:
    """Applies one strategy and prints its perplexity, KL to the base model and effective bits."""
    from agentqat import session, ui
    from agentqat.strategy.document import dump_strategy, load_strategy

    document = json.loads(dump_strategy(load_strategy(args.strategy)))
    session.check_servable(document, args.model, args.deploy)
    arena = session.quantize_arena(args.model, args.corpus, args.windows, args.window_tokens, args.calibration_windows, args.seed)
    report = ui.quantize_report(session.quantize_one(document, arena, reporter=ui.PhaseView()), vars(args))
    print(json.dumps(report, indent=2)) if args.json else ui.print_quantize(report)
    return 0


def cmd_baseline(args: argparse.Namespace) -> int:
    """Plays the baseline matrix (RTN, GPTQ, AWQ, HQQ, SmoothQuant, NF4/FP4, fp8, LLM.int8 at 8/4/3/2 bits and
    several calibration budgets) on Ray evaluator actors, records every match in runs/<name>/ and prints it.
    Re-running with the same --run resumes: recorded matches are not played again."""
    from agentqat import session, ui
    from agentqat.arena.baselines import baseline_requests
    from agentqat.arena.config import load_arena

    arena = on_device(load_arena(args.arena), args)
    stage = arena.stage(args.stage or arena.stages[-1].name)
    seed = arena.seed if args.seed is None else args.seed
    requests = baseline_requests(stage.name, seed, _int_list(args.bits, "--bits"), _int_list(args.calibration, "--calibration"), _names(args.methods))
    directory = args.runs / (args.run or f"baseline-{arena.name}-{stage.name}-seed{seed}")
    progress = ui.MatchProgress(total=len(requests) * stage.window_sets)
    with progress:
        outcome = session.run_baseline(directory, arena, requests, stage.name, seed, workers=args.workers, ray_address=args.ray_address,
                                       on_result=progress.update, reporter=ui.PhaseView())  # fmt: skip
    ui.print_leaderboard(outcome.rows, title=f"baseline on {arena.name}, stage {stage.name}, seed {seed}")
    ui.print_cache_stats(list(outcome.cache_stats), outcome.replayed)
    print(f"run directory: {directory}")
    return 0


def cmd_levels_build(args: argparse.Namespace) -> int:
    """Builds the arena's level database: every linear module quantized at every level of its [levels] ladder,
    stored under the cache directory and shared by every worker and run on this machine. Levels already built
    are kept, so a killed build resumes where it stopped; matches build missing levels themselves otherwise."""
    import torch

    from agentqat import ui
    from agentqat.arena.config import load_arena
    from agentqat.arena.match import Workbench

    arena = load_arena(args.arena)
    if arena.levels is None:
        raise UserError(f"arena {arena.name} declares no level ladder", "pass an arena with [levels], e.g. --arena smollm2-3bit")
    started = time.perf_counter()
    workbench = Workbench(arena, reporter=ui.PhaseView())
    torch.set_num_threads(args.threads)
    database = workbench.levels()
    packed = sum(database.packed_modules(config) > 0 for config in database.levels)
    print(f"level database: {len(database.levels)} levels ({packed} packed), {database.bytes / 2**30:.2f} GiB in {database.directory} "
          f"({time.perf_counter() - started:.0f} s)")  # fmt: skip
    return 0


def cmd_llm_serve(args: argparse.Namespace) -> int:
    """Serves the LLM generator's proposer model with vLLM's OpenAI-compatible server (JSON-schema-constrained
    decoding) until Ctrl-C; restarts it once if it dies. Prints the URL and model name that clients use."""
    import signal

    from agentqat.serving.server import VllmServer

    # The server runs in its own process group, so it outlives this process unless we stop it: make `kill` stop
    # it as Ctrl-C does.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    server = VllmServer(args.model, port=args.port, threads=args.threads, log_path=args.log)
    print(f"starting vLLM for {server.model_name} on port {server.port}, log in {server.log_path} ...", flush=True)
    with server:
        print(f"serving model {server.model_name} at {server.base_url} (ready in {server.start_seconds:.0f} s); Ctrl-C stops it", flush=True)
        try:
            while True:
                server.ensure_running()
                time.sleep(2)
        except KeyboardInterrupt:
            print("stopping the server", flush=True)
    return 0


def cmd_evolve(args: argparse.Namespace) -> int:
    """Evolves strategies on an arena: generations of proposals from a generator (random, evo, llm), staged
    matches on Ray evaluator actors, survivors kept; every proposal and match recorded in runs/<name>/.
    `--resume runs/<name>` continues a stopped or killed run with its recorded settings, shows a finished one
    (starting nothing), or extends it with new stopping rules (--generations, --patience, --budget, --minutes,
    --no-clear-stop)."""
    from agentqat import session, ui
    from agentqat.rundir.manifest import LlmSettings, read_manifest

    if args.resume:
        directory, arena = Path(args.resume), None
        changes = _stop_rule_changes(args)
        if not (changes and session.extend_run(directory, **changes)) and (summary := session.finished_summary(directory)):
            return _show_finished(directory, summary)
        fields = vars(read_manifest(directory).settings)
    else:
        from agentqat.arena.config import load_arena

        arena, fields = on_device(load_arena(args.arena), args), _settings_fields(args)
        if args.deploy is not None:
            arena = arena.model_copy(update={"deploy": args.deploy})
        if args.population is None:  # the arena's offspring per generation where it declares a ladder
            fields["population"] = arena.levels.offspring if arena.levels else defaults.POPULATION
        directory = args.runs / (args.run or f"evolve-{fields['generator']}-{arena.name}-seed{fields['seed']}")
    try:
        # The view opens first: a new run's manifest loads the model's facts (converting the model on first use).
        with ui.EvolveView(str(directory), fields["generator"], fields["generations"], fields.get("match_budget")) as view:
            manifest = None
            if arena is not None:
                llm = LlmSettings(backend=args.llm_backend, model=args.llm_model, url=args.llm_url or None, gpu_fraction=args.llm_gpu_fraction, fallback=args.llm_fallback)
                sensitivity = "map" if args.sensitivity_map else "probes"
                manifest = session.evolve_manifest(arena, llm if args.generator == "llm" else None, reporter=view, sensitivity=sensitivity, **fields)
            outcome = session.run_evolve(directory, manifest, workers=args.workers, ray_address=args.ray_address, observer=view)
    except KeyboardInterrupt:
        print(f"agentqat evolve: interrupted; continue with: agentqat evolve --resume {directory}", file=sys.stderr)
        raise
    ui.print_evolve_outcome(outcome, directory)
    return 0


STOP_RULE_FLAGS = {"generations": "--generations", "patience": "--patience", "match_budget": "--budget",
                   "time_budget_s": "--minutes", "stop_when_clear": "--no-clear-stop"}  # fmt: skip


def _settings_fields(args: argparse.Namespace) -> dict:
    """Returns the EvolveSettings fields of a new run from the evolve flags (defaults where not given)."""
    fields = {"generator": args.generator, "seed": args.seed, "population": args.population, **_stop_rule_changes(args)}
    return {"generations": defaults.GENERATIONS, "patience": defaults.PATIENCE, **fields}


def _stop_rule_changes(args: argparse.Namespace) -> dict:
    """Returns the stopping rules given on the command line, as EvolveSettings fields."""
    given = {"generations": args.generations, "patience": args.patience, "match_budget": args.budget,
             "time_budget_s": None if args.minutes is None else args.minutes * 60}  # fmt: skip
    return {key: value for key, value in given.items() if value is not None} | ({"stop_when_clear": False} if args.no_clear_stop else {})


def _show_finished(directory: Path, summary: dict) -> int:
    """Prints a finished run from its records (starting nothing) and the exact command that extends it."""
    from agentqat import session, ui
    from agentqat.rundir.journal import read_run
    from agentqat.rundir.manifest import read_manifest

    change = session.extension(read_manifest(directory), summary)
    flags = [
        STOP_RULE_FLAGS[key] if key == "stop_when_clear" else f"{STOP_RULE_FLAGS[key]} {value / 60 if key == 'time_budget_s' else value:g}"
        for key, value in change.items()
    ]
    ui.print_finished(read_run(directory), " ".join(["agentqat evolve --resume", str(directory), *flags]) if change else "")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    """Prints a recorded run (evolve or baseline): its generations, every stage's leaderboard (failures
    included) and the Pareto front of KL against bits, recomputed from the recorded match results."""
    from agentqat import ui
    from agentqat.rundir.journal import read_run

    ui.print_run(read_run(Path(args.run_dir)))
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    """Compares generators at an equal budget: one evolve run per arm and seed on one shared evaluator pool and
    vLLM server (seed by seed), the uniform baselines, every run's winner re-scored on the test split (and on
    --test-corpus), the winners confirmed on --confirm-arena, then the report (DIR/report.md, DIR/report.html).
    `--resume DIR` continues a comparison (and may add --confirm-arena, or arms with --add-arms). `--write-plan DIR`
    writes the pre-registration DIR/PLAN.md to fill in before the comparison starts; the report says which of its
    hypotheses held. A new comparison under a reports/ folder does not start without DIR/PLAN.md."""
    from agentqat import ui
    from agentqat.arena.config import load_arena
    from agentqat.rundir.manifest import LlmSettings, read_manifest
    from agentqat.session import compare
    from agentqat.study import plan

    if args.write_plan is not None:
        llm = LlmSettings(backend=args.llm_backend, model=args.llm_model, url=args.llm_url or None, gpu_fraction=args.llm_gpu_fraction)
        arms = [compare.parse_arm(spec, llm).name for spec in _names(args.generators)]
        budget = f"{args.budget} matches" + (f", {args.tokens:,} evaluated tokens" if args.tokens else "")
        path = plan.write_plan(args.write_plan, plan.plan_template(load_arena(args.arena).name, arms, args.seeds, budget, args.test_corpus))
        print(f"wrote {path}: fill it in (hypotheses in its `hypotheses` block) before the comparison starts")
        return 0
    if args.resume:
        directory, settings = Path(args.resume), compare.read_settings(Path(args.resume))
        if args.confirm_arena:
            settings = compare.set_confirm_arena(directory, load_arena(args.confirm_arena))
        if args.add_arms:
            recorded = next((arm.llm for arm in settings.arms if arm.llm is not None), None)  # the same LLM settings
            llm = recorded or LlmSettings(backend=args.llm_backend, model=args.llm_model, url=args.llm_url or None, gpu_fraction=args.llm_gpu_fraction)
            arms = tuple(compare.parse_arm(spec, llm) for spec in _names(args.add_arms))
            settings = compare.add_arms(directory, arms, compare.parse_seeds(args.add_seeds) if args.add_seeds else None)
        if args.prior:
            raise UserError(f"--prior {args.prior}: a comparison's prior is fixed when it starts", "drop --prior, or start a new comparison")
    elif args.add_arms or args.add_seeds:
        raise UserError("--add-arms and --add-seeds extend a recorded comparison", "use them with --resume DIR")
    else:
        llm = LlmSettings(backend=args.llm_backend, model=args.llm_model, url=args.llm_url or None, gpu_fraction=args.llm_gpu_fraction)
        arena = on_device(load_arena(args.arena), args)
        population = args.population or (arena.levels.offspring if arena.levels else defaults.POPULATION)
        settings = compare.CompareSettings(
            arena=arena, arms=tuple(compare.parse_arm(spec, llm) for spec in _names(args.generators)),
            seeds=compare.parse_seeds(args.seeds), match_budget=args.budget, token_budget=args.tokens,
            population=population, generations=args.generations, test_corpus=args.test_corpus,
            confirm_arena=load_arena(args.confirm_arena) if args.confirm_arena else None, prior=args.prior or "uniform",
        )  # fmt: skip
        directory = args.runs / (args.run or f"compare-{settings.arena.name}")
        plan.require_plan(directory)

    def view(run: str):
        manifest = read_manifest(directory / RUNS_DIR / run) if (directory / RUNS_DIR / run / MANIFEST_FILE).exists() else None
        generator = manifest.settings.generator if manifest else run.rpartition("-seed")[0]
        return ui.EvolveView(run, generator, settings.generations, settings.match_budget)

    try:
        markdown, page = compare.run_compare(directory, None if args.resume else settings, workers=args.workers, ray_address=args.ray_address,
                                             observer_for=view, reporter=ui.PhaseView())  # fmt: skip
    except KeyboardInterrupt:
        print(f"agentqat compare: interrupted; continue with: agentqat compare --resume {directory}", file=sys.stderr)
        raise
    print(f"wrote {markdown} and {page}")
    return 0


def cmd_sensitivity(args: argparse.Namespace) -> int:
    """Measures the arena's sensitivity map: per decoder layer and module role the diagonal Fisher information and
    gradient norm of the loss on calibration windows, and the KL to the base model with that layer (role) alone
    quantized at each width; prints them and their rank correlations. Kept in the cache with a heat map PNG, so
    a second call (and evolve --sensitivity-map) reads it."""
    from agentqat import ui
    from agentqat.arena.config import load_arena
    from agentqat.study.sensitivity_map import shared_map

    arena = load_arena(args.arena)
    if args.threads is not None:
        arena = arena.model_copy(update={"compute_threads": args.threads})
    if args.fisher_windows < 1:
        raise UserError(f"--fisher-windows {args.fisher_windows} is below 1", "e.g. --fisher-windows 4")
    ui.print_sensitivity(*shared_map(arena, tuple(_int_list(args.bits, "--bits")), args.fisher_windows, reporter=ui.PhaseView()))
    return 0


def cmd_polish(args: argparse.Namespace) -> int:
    """Polishes a strategy by block-wise quantization-aware training (EfficientQAT's Block-AP): each decoder block's
    weights, scales and zero points learn to reproduce the base block, one block at a time; then plays the
    unpolished and the polished strategy on the arena's last stage and the held-out split, chooses the final one on
    held-out KL, plays only it on the test split (once), and records them.
    `--ablate` prints the table over ordering, curriculum and learnable pow2 scales at 3 and 2 bits instead."""
    from agentqat import ui
    from agentqat.arena.config import DEFAULT_ARENA, load_arena
    from agentqat.polish import PolishSettings
    from agentqat.rundir.manifest import read_manifest
    from agentqat.session import polish

    if not (args.best or args.strategy or args.ablate):
        raise UserError("polish needs --best (with RUN_DIR), --strategy STRATEGY.json or --ablate", "e.g. agentqat polish runs/NAME --best")
    if args.best and args.run_dir is None:
        raise UserError("--best needs the run directory", "e.g. agentqat polish runs/NAME --best")
    arena = on_device(load_arena(args.arena) if args.arena else read_manifest(Path(args.run_dir)).arena if args.run_dir else load_arena(DEFAULT_ARENA), args)
    if args.threads is not None:
        arena = arena.model_copy(update={"compute_threads": args.threads})
    try:
        settings = PolishSettings(windows=args.windows, epochs=args.epochs, weight_lr=args.weight_lr, scale_lr=args.scale_lr,
                                  order=args.order, curriculum=args.curriculum, learn_scales=not args.fixed_scales, seed=arena.seed)  # fmt: skip
    except ValueError as error:
        raise UserError(str(error), "see agentqat polish --help") from None
    if args.ablate:
        directory = args.out or Path("runs") / f"polish-ablation-{arena.name}"
        ui.print_ablation(polish.run_ablation(arena, settings, _int_list(args.bits, "--bits"), directory, reporter=ui.PhaseView()))
        print(f"rows recorded in {directory / ABLATION_FILE}; the same command resumes them")
        return 0
    document = polish.best_document(Path(args.run_dir)) if args.best else strategy_document(args.strategy)
    tag = f"{document.get('name', 'strategy')}-{args.order}{'-curriculum' * args.curriculum}"
    directory = args.out or (Path(args.run_dir) / "polish" / tag if args.run_dir else Path("runs") / f"polish-{tag}")
    ui.print_polish(polish.polish_strategy(document, arena, settings, directory, args.test_windows, reporter=ui.PhaseView(), heldout_windows=args.heldout_windows))
    return 0


def strategy_document(path: str) -> dict:
    """Returns the strategy file's document, validated and normalized (UserError naming the problem otherwise)."""
    from agentqat.strategy.document import dump_strategy, load_strategy

    return json.loads(dump_strategy(load_strategy(path)))


def cmd_report(args: argparse.Namespace) -> int:
    """Rebuilds DIR/report.md and the self-contained DIR/report.html of a comparison directory (DIR/runs/
    <generator>-seed<k>/ evolve runs, optionally DIR/baseline/ and DIR/test/) from its records alone."""
    from agentqat.report import build_report

    markdown, page = build_report(Path(args.comparison_dir), seed=args.seed)
    print(f"wrote {markdown} and {page}")
    return 0


def _int_list(text: str, option: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise UserError(f"{option} {text!r} is not a comma-separated list of integers", f"e.g. {option} 8,4,3") from None


def _names(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]
