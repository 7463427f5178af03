"""The `agentqat` command line: parses arguments, calls the library, hands results to `ui` to print.

Bad input raises UserError, printed as one line on stderr with exit code 2; nothing else is caught here.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from agentqat import defaults
from agentqat.arena.baselines import DEFAULT_BITS as BASELINE_BITS
from agentqat.arena.baselines import DEFAULT_CALIBRATION_BUDGETS as BASELINE_BUDGETS
from agentqat.arena.config import DEFAULT_ARENA
from agentqat.errors import UserError


def _quiet_libraries() -> None:
    """Silences the progress bars and notices that libraries print on every model load, through their
    environment variables: nothing heavy is imported before the first screen."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    # bitsandbytes warns on import that an optional hub-downloaded CPU kernel is missing; it has a fallback.
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)


def cmd_info(args: argparse.Namespace) -> int:
    """Prints the model's and corpus's facts and the base model's perplexity on the evaluation split."""
    import torch

    from agentqat import ui
    from agentqat.data import SPLITS, load_corpus, sample_windows, tokenize
    from agentqat.models import load_model
    from agentqat.quality import perplexity

    torch.set_num_threads(defaults.TORCH_THREADS)
    corpus = load_corpus(args.corpus)
    loaded = load_model(args.model)
    split_tokens = {split: len(tokenize(loaded.tokenizer, corpus.split(split))) for split in SPLITS}
    eval_ids = tokenize(loaded.tokenizer, corpus.evaluation)
    windows = sample_windows(eval_ids, args.window_tokens, args.windows, args.seed)
    started = time.perf_counter()
    base_ppl = perplexity(loaded.model, windows)
    report = {
        "model": ui.facts_dict(loaded.facts, loaded.directory),
        "corpus": {"name": corpus.name, "source": corpus.source, "tokens": split_tokens},
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
    """Checks strategy files against the schema and a model; exit code 0 when all are valid, 2 otherwise."""
    from agentqat import ui
    from agentqat.models import load_facts
    from agentqat.resolve import resolve_strategy
    from agentqat.strategy import StrategyError, load_strategy

    facts = load_facts(args.model)
    failures = 0
    for path in args.strategies:
        try:
            resolved = resolve_strategy(load_strategy(path), facts)
        except StrategyError as error:
            failures += 1
            ui.print_invalid(path, error.lines)
        else:
            ui.print_valid(path, resolved, facts)
    return 2 if failures else 0


def cmd_quantize(args: argparse.Namespace) -> int:
    """Applies one strategy and prints its perplexity, KL to the base model and effective bits."""
    from agentqat import session, ui
    from agentqat.strategy import dump_strategy, load_strategy

    document = json.loads(dump_strategy(load_strategy(args.strategy)))
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

    arena = load_arena(args.arena)
    stage = arena.stage(args.stage or arena.stages[-1].name)
    seed = arena.seed if args.seed is None else args.seed
    requests = baseline_requests(stage.name, seed, _int_list(args.bits, "--bits"), _int_list(args.calibration, "--calibration"), _names(args.methods))
    directory = args.runs / (args.run or f"baseline-{arena.name}-{stage.name}-seed{seed}")
    progress = ui.MatchProgress(total=len(requests) * stage.window_sets)
    with progress:
        outcome = session.run_baseline(
            directory, arena, requests, stage.name, seed, workers=args.workers, ray_address=args.ray_address,
            on_result=progress.update, reporter=ui.PhaseView(),
        )  # fmt: skip
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
    size = sum(path.stat().st_size for path in database.directory.glob("*.safetensors"))
    print(f"level database: {len(database.levels)} levels, {size / 2**30:.2f} GiB in {database.directory} ({time.perf_counter() - started:.0f} s)")
    return 0


def cmd_llm_serve(args: argparse.Namespace) -> int:
    """Serves the LLM generator's proposer model with vLLM's OpenAI-compatible server (JSON-schema-constrained
    decoding) until Ctrl-C; restarts it once if it dies. Prints the URL and model name that clients use."""
    import signal

    from agentqat.llm.server import VllmServer

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

    if args.resume:
        directory, manifest = Path(args.resume), None
        changes = _stop_rule_changes(args)
        if not (changes and session.extend_run(directory, **changes)) and (summary := session.finished_summary(directory)):
            return _show_finished(directory, summary)
        settings = session.read_manifest(directory).settings
    else:
        from agentqat.arena.config import load_arena

        arena = load_arena(args.arena)
        llm = session.LlmSettings(backend=args.llm_backend, model=args.llm_model, url=args.llm_url or None, fallback=args.llm_fallback)
        fields = _settings_fields(args)
        if args.population is None:  # the arena's offspring per generation where it declares a ladder
            fields["population"] = arena.levels.offspring if arena.levels else defaults.POPULATION
        manifest = session.evolve_manifest(arena, llm if args.generator == "llm" else None, **fields)
        settings = manifest.settings
        directory = args.runs / (args.run or f"evolve-{settings.generator}-{arena.name}-seed{settings.seed}")
    try:
        with ui.EvolveView(str(directory), settings.generator, settings.generations, settings.match_budget) as view:
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
    from agentqat.runs import read_run

    change = session.extension(session.read_manifest(directory), summary)
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
    from agentqat.runs import read_run

    ui.print_run(read_run(Path(args.run_dir)))
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    """Compares generators at an equal budget: one evolve run per arm and seed on one shared evaluator pool and
    vLLM server (seed by seed), the uniform baselines, every run's winner re-scored on the test split (and on
    --test-corpus), then the report (DIR/report.md, DIR/report.html). `--resume DIR` continues a comparison."""
    from agentqat import session, ui
    from agentqat.session import compare

    if args.resume:
        directory, settings = Path(args.resume), compare.read_settings(Path(args.resume))
    else:
        from agentqat.arena.config import load_arena

        llm = session.LlmSettings(backend=args.llm_backend, model=args.llm_model, url=args.llm_url or None)
        settings = compare.CompareSettings(
            arena=load_arena(args.arena), arms=tuple(compare.parse_arm(spec, llm) for spec in _names(args.generators)),
            seeds=compare.parse_seeds(args.seeds), match_budget=args.budget, token_budget=args.tokens,
            population=args.population, generations=args.generations, test_corpus=args.test_corpus,
        )  # fmt: skip
        directory = args.runs / (args.run or f"compare-{settings.arena.name}")

    def view(run: str):
        manifest = session.read_manifest(directory / compare.RUNS_DIR / run) if (directory / compare.RUNS_DIR / run / "manifest.json").exists() else None
        generator = manifest.settings.generator if manifest else run.rpartition("-seed")[0]
        return ui.EvolveView(run, generator, settings.generations, settings.match_budget)

    try:
        markdown, page = compare.run_compare(
            directory, None if args.resume else settings, workers=args.workers, ray_address=args.ray_address,
            observer_for=view, reporter=ui.PhaseView(),
        )  # fmt: skip
    except KeyboardInterrupt:
        print(f"agentqat compare: interrupted; continue with: agentqat compare --resume {directory}", file=sys.stderr)
        raise
    print(f"wrote {markdown} and {page}")
    return 0


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


def _add_model_corpus(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=defaults.DEFAULT_MODEL, help="built-in name, HF directory, .gguf file or hub id (default: %(default)s)")
    parser.add_argument("--corpus", default=defaults.DEFAULT_CORPUS, help="packaged corpus, text file or hf:DATASET[:CONFIG] (default: %(default)s)")


def _add_arena(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--arena", default=DEFAULT_ARENA, help="packaged arena name (agentqat/arena/definitions/) or a TOML file (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=None, help="seed choosing windows and items (default: the arena's)")
    parser.add_argument("--workers", type=int, default=2, help="Ray evaluator actors (default: %(default)s)")
    parser.add_argument("--ray-address", default=None, help="join this Ray cluster instead of starting a local one")
    parser.add_argument("--run", default="", help="run name under --runs (default: derived from the job)")
    parser.add_argument("--runs", type=Path, default=Path("runs"), help="directory of runs (default: %(default)s)")


def _add_windows(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--windows", type=int, default=defaults.EVAL_WINDOWS, help="evaluation windows (default: %(default)s)")
    parser.add_argument("--window-tokens", type=int, default=defaults.WINDOW_TOKENS, help="tokens per window (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=defaults.SEED, help="seed choosing the windows (default: %(default)s)")


def build_parser() -> argparse.ArgumentParser:
    """Returns the argument parser with one sub-command per job."""
    parser = argparse.ArgumentParser(prog="agentqat", description="Discover LLM quantization strategies in a survival tournament.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    info = commands.add_parser("info", help="model and corpus facts, base perplexity", description=cmd_info.__doc__)
    _add_model_corpus(info)
    _add_windows(info)
    info.add_argument("--json", action="store_true", help="print JSON instead of tables")
    info.set_defaults(handler=cmd_info)

    validate = commands.add_parser("validate", help="check strategy files against the schema and a model", description=cmd_validate.__doc__)
    validate.add_argument("strategies", nargs="+", metavar="STRATEGY.json")
    validate.add_argument("--model", default=defaults.DEFAULT_MODEL, help="model to resolve against (default: %(default)s)")
    validate.set_defaults(handler=cmd_validate)

    quantize = commands.add_parser("quantize", help="apply one strategy: perplexity, KL to base, effective bits", description=cmd_quantize.__doc__)
    quantize.add_argument("--strategy", required=True, metavar="STRATEGY.json")
    _add_model_corpus(quantize)
    _add_windows(quantize)
    quantize.add_argument("--calibration-windows", type=int, default=defaults.CALIBRATION_WINDOWS, help="calibration windows (default: %(default)s)")
    quantize.add_argument("--json", action="store_true", help="print JSON instead of tables")
    quantize.set_defaults(handler=cmd_quantize)

    baseline = commands.add_parser("baseline", help="the baseline matrix of standard methods, recorded as a run", description=cmd_baseline.__doc__)
    _add_arena(baseline)
    baseline.add_argument("--stage", default="", help="arena stage to play (default: the arena's last)")
    baseline.add_argument("--bits", default=",".join(map(str, BASELINE_BITS)), help="bit widths (default: %(default)s)")
    baseline.add_argument("--calibration", default=",".join(map(str, BASELINE_BUDGETS)), help="calibration budgets in windows (default: %(default)s)")
    baseline.add_argument("--methods", default="", help="comma-separated subset, e.g. rtn,gptq (default: all)")
    baseline.set_defaults(handler=cmd_baseline)

    levels = commands.add_parser("levels", help="the level database of an arena's ladder", description="The level database of an arena's ladder.")
    levels_commands = levels.add_subparsers(dest="levels_command", required=True, metavar="LEVELS_COMMAND")
    build = levels_commands.add_parser("build", help="quantize every module at every ladder level (resumable)", description=cmd_levels_build.__doc__)
    build.add_argument("--arena", default="smollm2-3bit", help="arena name or TOML file with a [levels] ladder (default: %(default)s)")
    build.add_argument("--threads", type=int, default=defaults.TORCH_THREADS, help="torch threads (default: %(default)s)")
    build.set_defaults(handler=cmd_levels_build)

    llm = commands.add_parser("llm", help="the LLM generator's model server", description="The LLM generator's model server.")
    llm_commands = llm.add_subparsers(dest="llm_command", required=True, metavar="LLM_COMMAND")
    serve = llm_commands.add_parser("serve", help="serve the proposer model with vLLM until Ctrl-C", description=cmd_llm_serve.__doc__)
    serve.add_argument("--model", default=defaults.DEFAULT_MODEL, help="built-in name or HF directory (default: %(default)s)")
    serve.add_argument("--port", type=int, default=defaults.LLM_PORT, help="port on 127.0.0.1 (default: %(default)s)")
    serve.add_argument("--threads", type=int, default=defaults.LLM_THREADS, help="CPU threads of the vLLM worker, bound to the last CPUs (default: %(default)s)")
    serve.add_argument("--log", type=Path, default=None, help="server log file (default: $AGENTQAT_CACHE_DIR/logs/vllm-MODEL-PORT.log)")
    serve.set_defaults(handler=cmd_llm_serve)

    evolve = commands.add_parser("evolve", help="evolve strategies on an arena, recorded as a resumable run", description=cmd_evolve.__doc__)
    evolve.add_argument("--generator", default=defaults.GENERATOR, help="who proposes strategies: random, evo or llm (default: %(default)s)")
    evolve.add_argument("--arena", default=DEFAULT_ARENA, help="packaged arena name (agentqat/arena/definitions/) or a TOML file (default: %(default)s)")
    evolve.add_argument("--seed", type=int, default=defaults.SEED, help="search seed; the arena's seed picks the windows (default: %(default)s)")
    evolve.add_argument("--population", type=int, default=None, help=f"survivors kept and proposals per generation (default: the arena's [levels] offspring, else {defaults.POPULATION})")
    evolve.add_argument("--generations", type=int, default=None, help=f"at most this many generations (default: {defaults.GENERATIONS})")
    evolve.add_argument("--patience", type=int, default=None, help=f"stop after this many generations without a better score (default: {defaults.PATIENCE})")
    evolve.add_argument("--budget", type=int, default=None, help="match budget: stop before a generation it cannot pay (default: none)")
    evolve.add_argument("--minutes", type=float, default=None, help="time budget in minutes (default: none)")
    evolve.add_argument("--no-clear-stop", action="store_true", help="do not stop when one survivor's KL interval is clear of the rest (spend the whole budget)")
    evolve.add_argument("--workers", type=int, default=None, help="Ray evaluator actors; 0 plays in this process (default: 2, or 1 beside a managed vLLM server)")
    evolve.add_argument("--llm-backend", default="vllm", choices=("vllm", "transformers"), help="the LLM generator's backend: a vLLM server, or Outlines over transformers in this process (default: %(default)s)")
    evolve.add_argument("--llm-model", default=defaults.DEFAULT_MODEL, help="the proposer model: built-in name or HF directory (default: %(default)s)")
    evolve.add_argument("--llm-url", default="", help="use this running vLLM server (OpenAI API base URL) instead of starting one")
    evolve.add_argument("--llm-fallback", action="store_true", help="when the LLM server fails after its retries, record it and go on with the random generator")
    evolve.add_argument("--ray-address", default=None, help="join this Ray cluster instead of starting a local one")
    evolve.add_argument("--run", default="", help="run name under --runs (default: evolve-<generator>-<arena>-seed<seed>)")
    evolve.add_argument("--runs", type=Path, default=Path("runs"), help="directory of runs (default: %(default)s)")
    evolve.add_argument("--resume", default="", metavar="RUN_DIR", help="continue this run with its recorded settings; with stopping rules (--generations, --patience, --budget, --minutes, --no-clear-stop), extend it")
    evolve.set_defaults(handler=cmd_evolve)

    show = commands.add_parser("show", help="print a recorded run: leaderboards and Pareto front", description=cmd_show.__doc__)
    show.add_argument("run_dir", metavar="RUN_DIR", help="a run directory, e.g. runs/evolve-random-smollm2-default-seed0")
    show.set_defaults(handler=cmd_show)

    compare = commands.add_parser("compare", help="generators against each other at an equal budget, with statistics and a report", description=cmd_compare.__doc__)
    compare.add_argument("--arena", default=DEFAULT_ARENA, help="packaged arena name (agentqat/arena/definitions/) or a TOML file (default: %(default)s)")
    compare.add_argument("--generators", default=defaults.COMPARE_ARMS, help="arms: generators, LLM ablations as llm/no-reflection or llm/no-sensitivities, proposers as llm@MODEL (default: %(default)s)")
    compare.add_argument("--seeds", default=defaults.COMPARE_SEEDS, help="search seeds, a range or a list (default: %(default)s)")
    compare.add_argument("--budget", type=int, default=defaults.COMPARE_MATCHES, help="matches per run, the same for every arm (default: %(default)s)")
    compare.add_argument("--tokens", type=int, default=None, help="evaluated tokens per run, the same for every arm (default: no token limit)")
    compare.add_argument("--population", type=int, default=defaults.POPULATION, help="survivors kept and proposals per generation (default: %(default)s)")
    compare.add_argument("--generations", type=int, default=defaults.COMPARE_GENERATIONS, help="at most this many generations per run (default: %(default)s)")
    compare.add_argument("--test-corpus", default=None, metavar="FILE", help="also re-score every winner on this text file")
    compare.add_argument("--workers", type=int, default=None, help="Ray evaluator actors (default: 2, or 1 beside a managed vLLM server)")
    compare.add_argument("--ray-address", default=None, help="join this Ray cluster instead of starting a local one")
    compare.add_argument("--llm-backend", default="vllm", choices=("vllm", "transformers"), help="the LLM arms' backend (default: %(default)s)")
    compare.add_argument("--llm-model", default=defaults.DEFAULT_MODEL, help="the LLM arms' proposer unless an arm names one (default: %(default)s)")
    compare.add_argument("--llm-url", default="", help="use this running vLLM server instead of starting one")
    compare.add_argument("--run", default="", help="comparison name under --runs (default: compare-<arena>)")
    compare.add_argument("--runs", type=Path, default=Path("runs"), help="directory of runs (default: %(default)s)")
    compare.add_argument("--resume", default="", metavar="DIR", help="continue this comparison with its recorded settings")
    compare.set_defaults(handler=cmd_compare)

    report = commands.add_parser("report", help="rebuild a comparison's report (report.md, report.html) from its records", description=cmd_report.__doc__)
    report.add_argument("comparison_dir", metavar="DIR", help="a comparison directory holding runs/<generator>-seed<k>/")
    report.add_argument("--seed", type=int, default=defaults.SEED, help="seed of the bootstrap and permutation draws (default: %(default)s)")
    report.set_defaults(handler=cmd_report)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the command line; returns the process exit code."""
    args = build_parser().parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        _quiet_libraries()
        return handler(args)
    except UserError as error:
        print(f"agentqat {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"agentqat {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
