"""The `agentqat` command line: parses arguments, calls the library, hands results to `ui` to print.

Bad input raises UserError, printed as one line on stderr with exit code 2; nothing else is caught here.
"""

from __future__ import annotations

import argparse
import functools
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
    """Silences the progress bars and notices that libraries print on every model load."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # bitsandbytes warns on import that an optional hub-downloaded CPU kernel is missing; it has a fallback.
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
    import torch
    import transformers

    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    torch.set_num_threads(defaults.TORCH_THREADS)


def cmd_info(args: argparse.Namespace) -> int:
    """Prints the model's and corpus's facts and the base model's perplexity on the evaluation split."""
    from agentqat import ui
    from agentqat.data import SPLITS, load_corpus, sample_windows, tokenize
    from agentqat.models import load_model
    from agentqat.quality import perplexity

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
    from agentqat import ui
    from agentqat.apply import strategy_applied
    from agentqat.bits import strategy_bits
    from agentqat.calibration import calibration_key, load_or_collect
    from agentqat.data import load_corpus, sample_windows, tokenize
    from agentqat.models import load_model
    from agentqat.quality import compare, reference_of
    from agentqat.resolve import needs_calibration, resolve_strategy
    from agentqat.strategy import load_strategy

    strategy = load_strategy(args.strategy)
    corpus = load_corpus(args.corpus)
    loaded = load_model(args.model)
    resolved = resolve_strategy(strategy, loaded.facts)
    eval_windows = sample_windows(tokenize(loaded.tokenizer, corpus.evaluation), args.window_tokens, args.windows, args.seed)
    calibration = None
    if needs_calibration(resolved):
        calibration_windows = sample_windows(
            tokenize(loaded.tokenizer, corpus.calibration), args.window_tokens, args.calibration_windows, args.seed
        )
        key = calibration_key(loaded.facts.name, loaded.directory, corpus.source, calibration_windows)
        calibration = load_or_collect(loaded.model, key, calibration_windows)
    reference = reference_of(loaded.model, eval_windows)
    started = time.perf_counter()
    with strategy_applied(loaded.model, resolved, calibration) as applied:
        quantize_seconds = time.perf_counter() - started
        result = compare(loaded.model, reference)
    bits = strategy_bits(resolved, loaded.facts, applied.outlier_counts)
    report = ui.quantize_report(strategy, reference, result, bits, quantize_seconds, vars(args))
    print(json.dumps(report, indent=2)) if args.json else ui.print_quantize(report)
    return 0


def cmd_baseline(args: argparse.Namespace) -> int:
    """Plays the baseline matrix (RTN, GPTQ, AWQ, HQQ, SmoothQuant, NF4/FP4, fp8, LLM.int8 at 8/4/3/2 bits and
    several calibration budgets) on Ray evaluator actors, records every match in runs/<name>/ and prints it.
    Re-running with the same --run resumes: recorded matches are not played again."""
    import platform

    from agentqat import ui
    from agentqat.arena.baselines import baseline_requests
    from agentqat.arena.config import load_arena
    from agentqat.arena.pool import EvaluatorPool
    from agentqat.arena.recorded import RecordedPlayer
    from agentqat.arena.tournament import play_tournament
    from agentqat.store import RunStore

    arena = load_arena(args.arena)
    stage = args.stage or arena.stages[-1].name
    arena.stage(stage)
    seed = arena.seed if args.seed is None else args.seed
    requests = baseline_requests(stage, seed, _int_list(args.bits, "--bits"), _int_list(args.calibration, "--calibration"), _names(args.methods))
    if not requests:
        raise UserError("the baseline selection is empty", "check --methods and --bits")
    directory = args.runs / (args.run or f"baseline-{arena.name}-{stage}-seed{seed}")
    manifest = {
        "kind": "baseline",
        "arena": arena.model_dump(),
        "stage": stage,
        "seed": seed,
        "requests": len(requests),
        "versions": {"python": platform.python_version(), **_versions()},
    }
    store = RunStore.open(directory) if (directory / "manifest.json").exists() else RunStore.create(directory, manifest)
    progress = ui.MatchProgress(total=len(requests) * arena.stage(stage).window_sets)
    pool = EvaluatorPool(arena, workers=args.workers, ray_address=args.ray_address)
    player = RecordedPlayer(pool.run, store, on_result=progress.update)
    with progress:
        outcome = play_tournament(player, arena, requests, seed, stages=[stage])
    ui.print_leaderboard(outcome.final.rows, title=f"baseline on {arena.name}, stage {stage}, seed {seed}")
    ui.print_cache_stats(pool.cache_stats(), player.replayed)
    pool.shutdown()
    print(f"run directory: {directory}")
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
    `--resume runs/<name>` continues a stopped or killed run with its recorded settings."""
    import platform
    from dataclasses import asdict

    from agentqat import ui
    from agentqat.arena.config import Arena, load_arena
    from agentqat.arena.pool import make_pool
    from agentqat.arena.recorded import RecordedPlayer
    from agentqat.evolve import EvolveSettings, evolve
    from agentqat.generators import GENERATORS, SearchSpace, make_generator
    from agentqat.generators.fallback import WithFallback
    from agentqat.generators.layout import layout_id
    from agentqat.models import load_facts
    from agentqat.runs import EvolveJournal
    from agentqat.store import RunStore
    from agentqat.strategy import SCHEMA_VERSION

    if args.resume:
        directory = Path(args.resume)
        store = RunStore.open(directory)
        manifest = store.manifest
        if manifest.get("kind") != "evolve":
            raise UserError(f"{directory} is a {manifest.get('kind')} run, not an evolve run", "resume it with its own command")
        arena, settings = Arena.model_validate(manifest["arena"]), EvolveSettings(**manifest["settings"])
    else:
        arena = load_arena(args.arena)
        try:
            settings = EvolveSettings(
                generator=args.generator, seed=args.seed, population=args.population,
                generations=args.generations, patience=args.patience, match_budget=args.budget,
                time_budget_s=None if args.minutes is None else args.minutes * 60, stop_when_clear=not args.no_clear_stop,
            )  # fmt: skip
        except ValueError as error:
            raise UserError(str(error), "see agentqat evolve --help") from None
        if settings.generator not in GENERATORS:
            raise UserError(f"unknown generator {settings.generator!r}", f"pass --generator {' or '.join(sorted(GENERATORS))}")
        directory = args.runs / (args.run or f"evolve-{settings.generator}-{arena.name}-seed{settings.seed}")
        llm = None
        if settings.generator == "llm":
            llm = {"backend": args.llm_backend, "model": args.llm_model, "url": args.llm_url or None, "fallback": args.llm_fallback}
        manifest = {
            "kind": "evolve",
            "arena": arena.model_dump(),
            "settings": asdict(settings),
            "llm": llm,
            "strategy_schema_version": SCHEMA_VERSION,
            "versions": {"python": platform.python_version(), **_versions()},
        }
        store = RunStore.create(directory, manifest)
    try:
        space = SearchSpace(load_facts(arena.model), arena.bits_budget)
    except ValueError as error:
        raise UserError(f"arena {arena.name}: {error}", "raise bits_budget in the arena file") from None
    journal = EvolveJournal(store)
    llm = manifest.get("llm")
    pool = make_pool(arena, _evolve_workers(args.workers, llm), args.ray_address)
    view = ui.EvolveView(str(directory), settings.generator, settings.generations, settings.match_budget)
    player = RecordedPlayer(pool.run, store, on_result=view.match_finished, on_start=view.match_started)
    server = None
    try:
        with view:
            options, probes = {}, 0
            if llm:
                options, server, probes = _llm_options(llm, arena, space, player, directory)
                view.matches_before = probes
            generator = make_generator(settings.generator, space, **options)
            if llm and llm["fallback"]:
                generator = WithFallback(generator, make_generator("random", space))
            view.generator = generator
            identity = functools.partial(layout_id, facts=space.facts)
            outcome = evolve(generator, arena, player, settings, journal, view, prior_matches=probes, identity=identity)
    except KeyboardInterrupt:
        print(f"agentqat evolve: interrupted; continue with: agentqat evolve --resume {directory}", file=sys.stderr)
        raise
    finally:
        pool.shutdown()
        if server:
            server.stop()
    ui.print_evolve_outcome(outcome, directory)
    return 0


def _evolve_workers(workers: int | None, llm: dict | None) -> int:
    """Returns the evaluator actors: as asked, else 2, or 1 beside a managed vLLM server (one core each)."""
    if workers is not None:
        return workers
    return 1 if llm and llm["backend"] == "vllm" and not llm["url"] else defaults.EVOLVE_WORKERS


def _llm_options(llm: dict, arena, space, player, directory: Path) -> tuple[dict, object, int]:
    """Returns the LLM generator's options (backend, measured sensitivities), the managed server (or None) and
    the number of sensitivity probe matches. The backend is checked (health, constrained decoding) before any
    probe is played."""
    from agentqat.llm.backends import check_constrained, check_server, make_backend
    from agentqat.llm.server import VllmServer
    from agentqat.sensitivity import measure

    server = None
    if llm["backend"] == "vllm" and llm["url"]:
        check_server(llm["url"], llm["model"])
    elif llm["backend"] == "vllm":
        server = VllmServer(llm["model"], threads=defaults.LLM_THREADS, log_path=directory / "llm-server.log").start()
    try:
        backend = make_backend(llm["backend"], llm["model"], llm["url"], server)
        if llm["backend"] == "transformers":
            check_constrained(backend)  # a vLLM server was checked as it started or above
        sensitivities, probes = measure(player, arena, space.facts)
    except BaseException:
        if server:
            server.stop()
        raise
    return {"backend": backend, "sensitivities": sensitivities}, server, probes


def cmd_show(args: argparse.Namespace) -> int:
    """Prints a recorded run (evolve or baseline): its generations, every stage's leaderboard (failures
    included) and the Pareto front of KL against bits, recomputed from the recorded match results."""
    from agentqat import ui
    from agentqat.runs import read_run

    ui.print_run(read_run(Path(args.run_dir)))
    return 0


def _versions() -> dict:
    from importlib.metadata import version

    return {name: version(name) for name in ("agentqat", "torch", "transformers", "ray", "bitsandbytes")}


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
    parser.add_argument("--arena", default=DEFAULT_ARENA, help="arena name in arena/ or a TOML file (default: %(default)s)")
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
    evolve.add_argument("--arena", default=DEFAULT_ARENA, help="arena name in arena/ or a TOML file (default: %(default)s)")
    evolve.add_argument("--seed", type=int, default=defaults.SEED, help="search seed; the arena's seed picks the windows (default: %(default)s)")
    evolve.add_argument("--population", type=int, default=defaults.POPULATION, help="survivors kept and proposals per generation (default: %(default)s)")
    evolve.add_argument("--generations", type=int, default=defaults.GENERATIONS, help="at most this many generations (default: %(default)s)")
    evolve.add_argument("--patience", type=int, default=defaults.PATIENCE, help="stop after this many generations without a better score (default: %(default)s)")
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
    evolve.add_argument("--resume", default="", metavar="RUN_DIR", help="continue this run with its recorded settings")
    evolve.set_defaults(handler=cmd_evolve)

    show = commands.add_parser("show", help="print a recorded run: leaderboards and Pareto front", description=cmd_show.__doc__)
    show.add_argument("run_dir", metavar="RUN_DIR", help="a run directory, e.g. runs/evolve-random-smollm2-default-seed0")
    show.set_defaults(handler=cmd_show)
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
