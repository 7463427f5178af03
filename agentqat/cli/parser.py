"""The argument parser: one sub-command per job, each bound to its `handlers.cmd_*` handler."""

from __future__ import annotations

import argparse
from pathlib import Path

from agentqat import defaults
from agentqat.arena.baselines import DEFAULT_BITS as BASELINE_BITS
from agentqat.arena.baselines import DEFAULT_CALIBRATION_BUDGETS as BASELINE_BUDGETS
from agentqat.arena.config import DEFAULT_ARENA
from agentqat.cli import commands as handlers
from agentqat.cli import deploy_commands, engine_commands, plan_commands
from agentqat.cli.device_options import add_device


def _add_model_corpus(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=defaults.DEFAULT_MODEL, help="built-in name, HF directory, .gguf file or hub id (default: %(default)s)")
    parser.add_argument("--corpus", default=defaults.DEFAULT_CORPUS, help="packaged corpus, text file or hf:DATASET[:CONFIG] (default: %(default)s)")


def _add_arena(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--arena", default=DEFAULT_ARENA, help="packaged arena name (arena/) or a TOML file (default: %(default)s)")
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

    info = commands.add_parser("info", help="model and corpus facts, base perplexity", description=handlers.cmd_info.__doc__)
    _add_model_corpus(info)
    _add_windows(info)
    info.add_argument("--json", action="store_true", help="print JSON instead of tables")
    add_device(info)
    info.set_defaults(handler=handlers.cmd_info)

    validate = commands.add_parser("validate", help="check strategy files against the schema and a model", description=handlers.cmd_validate.__doc__)
    validate.add_argument("strategies", nargs="+", metavar="STRATEGY.json")
    validate.add_argument("--model", default=defaults.DEFAULT_MODEL, help="model to resolve against (default: %(default)s)")
    validate.add_argument("--deploy", default=defaults.DEPLOY, choices=defaults.DEPLOY_TARGETS, help="also check that this engine runs it: any, vllm-cpu, vllm-cuda or gguf (default: %(default)s)")
    validate.set_defaults(handler=handlers.cmd_validate)

    quantize = commands.add_parser("quantize", help="apply one strategy: perplexity, KL to base, effective bits", description=handlers.cmd_quantize.__doc__)
    quantize.add_argument("--strategy", required=True, metavar="STRATEGY.json")
    _add_model_corpus(quantize)
    _add_windows(quantize)
    quantize.add_argument("--calibration-windows", type=int, default=defaults.CALIBRATION_WINDOWS, help="calibration windows (default: %(default)s)")
    quantize.add_argument("--json", action="store_true", help="print JSON instead of tables")
    quantize.add_argument("--deploy", default=defaults.DEPLOY, choices=defaults.DEPLOY_TARGETS, help="refuse a strategy this engine cannot run: any, vllm-cpu, vllm-cuda "
        "or gguf (default: %(default)s)")
    quantize.set_defaults(handler=handlers.cmd_quantize)

    transfer = commands.add_parser("transfer", help="carry a strategy to another model by relative layer depth", description=deploy_commands.cmd_transfer.__doc__)
    transfer.add_argument("strategy", metavar="STRATEGY.json")
    transfer.add_argument("--from", dest="source", default=defaults.DEFAULT_MODEL, help="the model the strategy was made for (default: %(default)s)")
    transfer.add_argument("--to", dest="target", required=True, help="built-in name, HF directory or .gguf file of the model to carry it to")
    transfer.add_argument("--out", type=Path, required=True, help="the new strategy file")
    transfer.set_defaults(handler=deploy_commands.cmd_transfer)

    baseline = commands.add_parser("baseline", help="the baseline matrix of standard methods, recorded as a run", description=handlers.cmd_baseline.__doc__)
    _add_arena(baseline)
    baseline.add_argument("--stage", default="", help="arena stage to play (default: the arena's last)")
    baseline.add_argument("--bits", default=",".join(map(str, BASELINE_BITS)), help="bit widths (default: %(default)s)")
    baseline.add_argument("--calibration", default=",".join(map(str, BASELINE_BUDGETS)), help="calibration budgets in windows (default: %(default)s)")
    baseline.add_argument("--methods", default="", help="comma-separated subset, e.g. rtn,gptq (default: all)")
    add_device(baseline)
    baseline.set_defaults(handler=handlers.cmd_baseline)

    levels = commands.add_parser("levels", help="the level database of an arena's ladder", description="The level database of an arena's ladder.")
    levels_commands = levels.add_subparsers(dest="levels_command", required=True, metavar="LEVELS_COMMAND")
    build = levels_commands.add_parser("build", help="quantize every module at every ladder level (resumable)", description=handlers.cmd_levels_build.__doc__)
    build.add_argument("--arena", default="smollm2-3bit", help="arena name or TOML file with a [levels] ladder (default: %(default)s)")
    build.add_argument("--threads", type=int, default=defaults.TORCH_THREADS, help="torch threads (default: %(default)s)")
    build.set_defaults(handler=handlers.cmd_levels_build)

    plan = commands.add_parser("plan", help="memory per worker, level database size and step times, without loading weights", description=plan_commands.cmd_plan.__doc__)
    plan.add_argument("--model", default=None, help="built-in name, HF directory (a config.json is enough), .gguf file or cached hub id (default: the arena's)")
    plan.add_argument("--arena", default=DEFAULT_ARENA, help="packaged arena name or a TOML file (default: %(default)s)")
    plan.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default: %(default)s)")
    plan.add_argument("--gpu-memory", default=None, metavar="SIZE", help="the GPU's memory, e.g. 16GiB, 40GB, 80G: says whether a worker fits")
    plan.add_argument("--matches", type=int, default=defaults.PLAN_MATCHES, help="matches of the search to time, as evolve --budget counts them (default: %(default)s)")
    plan.add_argument("--workers", type=int, default=defaults.EVOLVE_WORKERS, help="evaluator workers running in parallel (default: %(default)s)")
    plan.add_argument("--rates", default=None, metavar="FILE", help="rates JSON written by bench/rates.py (default: the packaged agentqat/plan/rates-cpu.json)")
    plan.add_argument("--json", action="store_true", help="print JSON")
    plan.set_defaults(handler=plan_commands.cmd_plan)

    llm = commands.add_parser("llm", help="the LLM generator's model server", description="The LLM generator's model server.")
    llm_commands = llm.add_subparsers(dest="llm_command", required=True, metavar="LLM_COMMAND")
    serve = llm_commands.add_parser("serve", help="serve the proposer model with vLLM until Ctrl-C", description=handlers.cmd_llm_serve.__doc__)
    serve.add_argument("--model", default=defaults.DEFAULT_MODEL, help="built-in name or HF directory (default: %(default)s)")
    serve.add_argument("--port", type=int, default=defaults.LLM_PORT, help="port on 127.0.0.1 (default: %(default)s)")
    serve.add_argument("--threads", type=int, default=defaults.LLM_THREADS, help="CPU threads of the vLLM worker, bound to the last CPUs (default: %(default)s)")
    serve.add_argument("--log", type=Path, default=None, help="server log file (default: $AGENTQAT_CACHE_DIR/logs/vllm-MODEL-PORT.log)")
    serve.set_defaults(handler=handlers.cmd_llm_serve)

    evolve = commands.add_parser("evolve", help="evolve strategies on an arena, recorded as a resumable run", description=handlers.cmd_evolve.__doc__)
    evolve.add_argument("--generator", default=defaults.GENERATOR, help="who proposes strategies: random, evo or llm (default: %(default)s)")
    evolve.add_argument("--arena", default=DEFAULT_ARENA, help="packaged arena name (arena/) or a TOML file (default: %(default)s)")
    evolve.add_argument("--seed", type=int, default=defaults.SEED, help="search seed; the arena's seed picks the windows (default: %(default)s)")
    evolve.add_argument("--deploy", default=None, choices=defaults.DEPLOY_TARGETS, help="the engine every strategy must run on: any, vllm-cpu, vllm-cuda or gguf (default: the arena's deploy)")
    evolve.add_argument("--population", type=int, default=None, help=f"survivors kept and proposals per generation (default: the arena's [levels] offspring, else {defaults.POPULATION})")
    evolve.add_argument("--generations", type=int, default=None, help=f"at most this many generations (default: {defaults.GENERATIONS})")
    evolve.add_argument("--patience", type=int, default=None, help=f"stop after this many generations without a better score (default: {defaults.PATIENCE})")
    evolve.add_argument("--budget", type=int, default=None, help="match budget: stop before a generation it cannot pay (default: none)")
    evolve.add_argument("--minutes", type=float, default=None, help="time budget in minutes (default: none)")
    evolve.add_argument("--no-clear-stop", action="store_true", help="do not stop when one survivor's KL interval is clear of the rest (spend the whole budget)")
    evolve.add_argument("--workers", type=int, default=None, help="Ray evaluator actors; 0 plays in this process (default: 2, or 1 beside a managed vLLM server)")
    evolve.add_argument("--llm-backend", default="vllm", choices=("vllm", "openai", "transformers"), help="the LLM generator's backend: a vLLM server; openai: any "
        "OpenAI-compatible server with structured outputs at --llm-url, serving --llm-model; or Outlines over transformers in this process (default: %(default)s)")
    evolve.add_argument("--llm-model", default=defaults.DEFAULT_MODEL, help="the proposer: built-in name or HF directory; with --llm-backend openai, as the server lists it (default: %(default)s)")
    evolve.add_argument("--llm-url", default="", help="use this running server (OpenAI API base URL) instead of starting vLLM")
    evolve.add_argument("--llm-gpu-fraction", type=float, default=None, help="run the managed vLLM server on the GPU with this share of its memory, beside the workers (default: on the CPU)")
    evolve.add_argument("--sensitivity-map", action="store_true", help="give generators the arena's sensitivity map (agentqat sensitivity) instead of the 3-bit layer probes; recorded in the manifest")
    evolve.add_argument("--llm-fallback", action="store_true", help="when the LLM server fails after its retries, record it and go on with the random generator")
    evolve.add_argument("--ray-address", default=None, help="join this Ray cluster instead of starting a local one")
    evolve.add_argument("--run", default="", help="run name under --runs (default: evolve-<generator>-<arena>-seed<seed>)")
    evolve.add_argument("--runs", type=Path, default=Path("runs"), help="directory of runs (default: %(default)s)")
    evolve.add_argument("--resume", default="", metavar="RUN_DIR", help="continue this run with its recorded settings; with stopping rules (--generations, "
        "--patience, --budget, --minutes, --no-clear-stop), extend it")
    add_device(evolve)
    evolve.set_defaults(handler=handlers.cmd_evolve)

    show = commands.add_parser("show", help="print a recorded run: leaderboards and Pareto front", description=handlers.cmd_show.__doc__)
    show.add_argument("run_dir", metavar="RUN_DIR", help="a run directory, e.g. runs/evolve-random-smollm2-default-seed0")
    show.set_defaults(handler=handlers.cmd_show)

    compare = commands.add_parser("compare", help="generators against each other at an equal budget, with statistics and a report", description=handlers.cmd_compare.__doc__)
    compare.add_argument("--arena", default=DEFAULT_ARENA, help="packaged arena name (arena/) or a TOML file (default: %(default)s)")
    compare.add_argument("--generators", default=defaults.COMPARE_ARMS, help="arms: generators, LLM ablations as llm/no-reflection or llm/no-sensitivities, "
        "proposers as llm@MODEL (default: %(default)s)")
    compare.add_argument("--seeds", default=defaults.COMPARE_SEEDS, help="search seeds, a range or a list (default: %(default)s)")
    compare.add_argument("--budget", type=int, default=defaults.COMPARE_MATCHES, help="matches per run, the same for every arm (default: %(default)s)")
    compare.add_argument("--tokens", type=int, default=None, help="evaluated tokens per run, the same for every arm (default: no token limit)")
    compare.add_argument("--population", type=int, default=None, help=f"survivors kept and proposals per generation (default: the arena's ladder offspring, else {defaults.POPULATION})")
    compare.add_argument("--generations", type=int, default=defaults.COMPARE_GENERATIONS, help="at most this many generations per run (default: %(default)s)")
    compare.add_argument("--test-corpus", default=None, metavar="FILE", help="also re-score every winner on this text file")
    compare.add_argument("--confirm-arena", default=None, metavar="ARENA", help="also confirm every run's winner and the shared prior on this (full) arena's last stage; allowed with --resume")
    compare.add_argument("--prior", default=None, choices=("uniform", "uniform+knapsack"), help="every arm's start: the best uniform strategies within the budget, plus the knapsack allocation (its "
        "unit costs measured once, as preparation) (default: uniform)")
    compare.add_argument("--workers", type=int, default=None, help="Ray evaluator actors (default: 2, or 1 beside a managed vLLM server)")
    compare.add_argument("--ray-address", default=None, help="join this Ray cluster instead of starting a local one")
    compare.add_argument("--llm-backend", default="vllm", choices=("vllm", "openai", "transformers"), help="the LLM arms' backend (default: %(default)s)")
    compare.add_argument("--llm-model", default=defaults.DEFAULT_MODEL, help="the LLM arms' proposer unless an arm names one (default: %(default)s)")
    compare.add_argument("--llm-url", default="", help="use this running server (OpenAI API base URL) instead of starting vLLM")
    compare.add_argument("--llm-gpu-fraction", type=float, default=None, help="run the managed vLLM server on the GPU with this share of its memory (default: on the CPU)")
    compare.add_argument("--run", default="", help="comparison name under --runs (default: compare-<arena>)")
    compare.add_argument("--runs", type=Path, default=Path("runs"), help="directory of runs (default: %(default)s)")
    compare.add_argument("--resume", default="", metavar="DIR", help="continue this comparison with its recorded settings")
    compare.add_argument("--add-arms", default="", metavar="ARMS", help="with --resume: add these arms (e.g. llm@gemma3-270m), played on the same terms")
    compare.add_argument("--add-seeds", default="", metavar="SEEDS", help="with --add-arms: the comparison's seeds the new arms play (default: all)")
    compare.add_argument("--write-plan", default=None, type=Path, metavar="DIR", help="write DIR/PLAN.md, the pre-registration to fill in (hypotheses, arms, seeds, budget, quantity, test) for the "
        "comparison the other options describe, and stop; a new comparison under reports/ needs one")
    add_device(compare)
    compare.set_defaults(handler=handlers.cmd_compare)

    sensitivity = commands.add_parser("sensitivity", help="per layer and role: Fisher, gradient norm, KL at 2-8 bits, rank correlations", description=handlers.cmd_sensitivity.__doc__)
    sensitivity.add_argument("--arena", default=DEFAULT_ARENA, help="packaged arena name or TOML file (default: %(default)s)")
    sensitivity.add_argument("--bits", default=",".join(map(str, defaults.SENSITIVITY_BITS)), help="probe widths (default: %(default)s)")
    sensitivity.add_argument("--fisher-windows", type=int, default=defaults.FISHER_WINDOWS, help="calibration windows of the Fisher estimate (default: %(default)s)")
    sensitivity.add_argument("--threads", type=int, default=None, help="torch threads (default: the arena's compute_threads)")
    sensitivity.set_defaults(handler=handlers.cmd_sensitivity)

    polish = commands.add_parser("polish", help="block-wise QAT of a strategy, played against the unpolished one", description=handlers.cmd_polish.__doc__)
    polish.add_argument("run_dir", nargs="?", default=None, metavar="RUN_DIR", help="an evolve run (with --best); its arena unless --arena")
    which = polish.add_mutually_exclusive_group()
    which.add_argument("--best", action="store_true", help="polish the run's best strategy (its last stage's first)")
    which.add_argument("--strategy", default=None, metavar="STRATEGY.json", help="polish this strategy")
    which.add_argument("--ablate", action="store_true", help="the ablation table: ordering, curriculum, learnable pow2 scales, at 3 and 2 bits")
    polish.add_argument("--arena", default=None, help=f"packaged arena name or TOML file (default: the run's, else {DEFAULT_ARENA})")
    polish.add_argument("--bits", default=",".join(map(str, defaults.POLISH_ABLATE_BITS)), help="the ablation's widths (default: %(default)s)")
    polish.add_argument("--order", default="natural", choices=("natural", "sensitivity"), help="blocks in natural order or most sensitive first (default: %(default)s)")
    polish.add_argument("--curriculum", action="store_true", help="train below-4-bit blocks at 4, then 3, then 2 bits")
    polish.add_argument("--fixed-scales", action="store_true", help="train the weights only, scales (and pow2 exponents) as quantized")
    polish.add_argument("--windows", type=int, default=defaults.POLISH_WINDOWS, help="calibration windows per block (default: %(default)s)")
    polish.add_argument("--epochs", type=int, default=defaults.POLISH_EPOCHS, help="epochs per block and width (default: %(default)s)")
    polish.add_argument("--weight-lr", type=float, default=defaults.POLISH_WEIGHT_LR, help="AdamW learning rate of the weights (default: %(default)s)")
    polish.add_argument("--scale-lr", type=float, default=defaults.POLISH_SCALE_LR, help="AdamW learning rate of the log2 scales (default: %(default)s)")
    polish.add_argument("--heldout-windows", type=int, default=defaults.TEST_WINDOWS, help="held-out-split windows both are played on, where the final strategy is chosen (default: %(default)s)")
    polish.add_argument("--test-windows", type=int, default=defaults.TEST_WINDOWS, help="test-split windows the final strategy (chosen on held-out text) is played "
        "on, once; 0: none (default: %(default)s)")
    polish.add_argument("--threads", type=int, default=None, help="torch threads (default: the arena's compute_threads)")
    polish.add_argument("--out", type=Path, default=None, help="polish directory (default: RUN_DIR/polish/<name>-<order>[-curriculum], else runs/polish-...; --ablate: runs/polish-ablation-<arena>)")
    add_device(polish)
    polish.set_defaults(handler=handlers.cmd_polish)
    export = commands.add_parser("export", help="write a strategy's quantized model for an engine (compressed-tensors, gguf, fake-quant)", description=deploy_commands.cmd_export.__doc__)
    export.add_argument("run_dir", nargs="?", metavar="RUN_DIR", help="a recorded run to take the strategy from (with --best)")
    export.add_argument("--best", action="store_true", help="the run's best survivor of its arena's last stage")
    export.add_argument("--max-bits", type=float, default=None, help="with --best: the best survivor within this many effective bits per weight")
    export.add_argument("--strategy", default=None, metavar="STRATEGY.json", help="export this strategy instead of a run's")
    export.add_argument("--polished", default=None, metavar="DIR", help="export a polish directory (agentqat polish): its strategy with the trained weights")
    export.add_argument("--format", required=True, help="compressed-tensors (packed int codes vLLM serves), gguf, or fake-quant (dequantized float32: the arena's quality, none of the memory gain)")
    export.add_argument("--out", type=Path, required=True, help="directory to write (new or empty)")
    export.add_argument("--deploy", default=defaults.DEPLOY, choices=defaults.DEPLOY_TARGETS, help="refuse what this engine cannot run: any, vllm-cpu, vllm-cuda or gguf (default: %(default)s)")
    export.add_argument("--arena", default=None, help=f"arena to quantize on (default: the run's or the polish's, or {DEFAULT_ARENA} with --strategy)")
    export.add_argument("--model", default=None, help="quantize on this model with the arena's settings (its ladder built for it, no file budget); "
                        "a strategy made for another model is carried by `agentqat transfer` first")
    export.set_defaults(handler=deploy_commands.cmd_export)

    engine = commands.add_parser("engine-costs", help="decode latency and memory per scheme of a vLLM target, measured on the engine", description=deploy_commands.cmd_engine_costs.__doc__)
    engine.add_argument("--deploy", required=True, choices=("vllm-cpu", "vllm-cuda"), help="the engine to measure: vllm-cpu or vllm-cuda")
    engine.add_argument("--arena", default=DEFAULT_ARENA, help="the arena whose model is measured (default: %(default)s)")
    engine.add_argument("--remeasure", action="store_true", help="measure again, replacing the cached figures")
    engine.add_argument("--keep", type=Path, default=None, help="keep the uniform exports and the server logs here")
    engine.set_defaults(handler=deploy_commands.cmd_engine_costs)

    engines = commands.add_parser("engines", help="the engines found (llama.cpp's pinned tools, vLLM), versions and paths", description=engine_commands.cmd_engines.__doc__)
    engines.add_argument("--build", action="store_true", help="build the pinned llama.cpp first if it is missing")
    engines.add_argument("--json", action="store_true", help="print JSON")
    engines.set_defaults(handler=engine_commands.cmd_engines)

    engine_eval = commands.add_parser("engine-eval", help="a GGUF file (or a stock llama-quantize type) measured by llama.cpp: "
        "KL, top token, perplexity, bytes", description=engine_commands.cmd_engine_eval.__doc__)
    engine_eval.add_argument("file", nargs="?", metavar="FILE.gguf", help="the GGUF file to measure")
    engine_eval.add_argument("--stock", default=None, metavar="TYPE", help="measure llama-quantize's stock recipe of this type instead (Q4_0, IQ4_NL, Q3_K_M, ...)")
    engine_eval.add_argument("--imatrix", action="store_true", help="with --stock: quantize with an importance matrix from the calibration split")
    engine_eval.add_argument("--text", "--split", dest="text", default="test", help="a corpus split (calibration, evaluation, heldout, test) or a text file (default: %(default)s)")
    engine_eval.add_argument("--chunks", type=int, default=16, help="chunks llama-perplexity scores, fewer where the text is shorter (default: %(default)s)")
    engine_eval.add_argument("--context", type=int, default=defaults.WINDOW_TOKENS, help="tokens per chunk (default: %(default)s)")
    engine_eval.add_argument("--json", action="store_true", help="print JSON")
    engine_eval.add_argument("--reference", default=None, metavar="MODEL", help="measure against this model's logits instead of --model's (e.g. the model a folded one came from)")
    _add_model_corpus(engine_eval)
    engine_eval.set_defaults(handler=engine_commands.cmd_engine_eval)

    fold = commands.add_parser("fold-awq", help="the arena's model with AWQ's scales folded into its norms, for any GGUF type", description=engine_commands.cmd_fold_awq.__doc__)
    fold.add_argument("--arena", default=DEFAULT_ARENA, help="the arena whose model and calibration windows are used (default: %(default)s)")
    fold.add_argument("--type", default="IQ4_NL", help="the GGML type the scales are chosen for: Q4_0, Q5_0, Q8_0 or IQ4_NL (default: %(default)s)")
    fold.add_argument("--model", default=None, help="fold this model instead of the arena's (built-in name, HF directory or .gguf file)")
    fold.add_argument("--out", type=Path, required=True, help="the new model directory")
    fold.set_defaults(handler=engine_commands.cmd_fold_awq)

    report = commands.add_parser("report", help="rebuild a comparison's report (report.md, report.html) from its records", description=handlers.cmd_report.__doc__)
    report.add_argument("comparison_dir", metavar="DIR", help="a comparison directory holding runs/<generator>-seed<k>/")
    report.add_argument("--seed", type=int, default=defaults.SEED, help="seed of the bootstrap and permutation draws (default: %(default)s)")
    report.set_defaults(handler=handlers.cmd_report)
    return parser
