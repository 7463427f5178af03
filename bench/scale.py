"""How cost grows with the model: screening-match time, level-build time, peak memory and level bytes for
SmolLM2-135M, Gemma 3 270M and random-initialised Llama-shaped models of about 0.5B and 1B parameters (quality numbers
of those are meaningless; their time and memory are real), on this machine, fitted as cost = a * parameters^b.

    nice -n 10 .venv/bin/python bench/scale.py [--out reports/scale] [--threads 1] [--models smollm2,gemma3,llama-0.5b,llama-1b]

Each model runs in a subprocess of its own (so that its peak memory is its own, ru_maxrss), at one torch thread,
timed in the process's CPU time (other users' load does not count; see bench/rates.py) beside wall time:

reference    the base model's references (agentqat.arena.quality.reference_of) on the screening windows
level build  one level, RTN W4 g64 asymmetric, of every linear module, written packed (agentqat.levels.build_database)
screen       one screening match with every module read from that level: the strategy applied from the database
             and agentqat.arena.quality.compare on the windows (what a database-backed match costs)
gptq block   GPTQ W4 g64 of the modules of one decoder block (their Hessians from 1 window), times the blocks:
             an estimate of one GPTQ level's build
Kept small to run in minutes on 2 cores: 2 screening windows of 256 tokens (512 tokens; the packaged arenas screen
512 to 1,024), one level, one GPTQ block. Writes models/<name>.json (one per model; a rerun measures only the missing ones), scale.json (every figure)
and scale.md (the table and the fits).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

WINDOWS, TOKENS = 2, 256
RANDOM_SHAPES = {  # Llama shapes: ~0.5B (Qwen2.5-0.5B-like widths, a 32k vocabulary) and Llama-3.2-1B's own
    "llama-0.5b": dict(hidden_size=1280, intermediate_size=3584, num_hidden_layers=24, num_attention_heads=20,
                       num_key_value_heads=4, vocab_size=32000, tie_word_embeddings=False),
    "llama-1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                     num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=True),
}  # fmt: skip
BUILTIN = {"smollm2": "smollm2-135m", "gemma3": "gemma3-270m"}
# (parameters, linear weights) of the models extrapolated to, from their configs (agentqat plan counts them so)
TARGETS = {"8B (Llama-3-8B)": (8.03e9, 6.98e9), "70B (Llama-3-70B)": (70.55e9, 68.45e9)}
# each cost against what drives it: the whole model's parameters (forward passes, memory) or the linear weights
# (quantizing and storing levels: embeddings are not quantized)
FITTED = {"screen_cpu_s": "parameters", "reference_cpu_s": "parameters", "peak_rss_bytes": "parameters",
          "level_build_cpu_s": "linear_weights", "gptq_level_cpu_s": "linear_weights", "level_bytes": "linear_weights"}


def _timed(work):
    wall, cpu = time.perf_counter(), time.process_time()
    value = work()
    return value, time.process_time() - cpu, time.perf_counter() - wall


def _model(name: str, seed: int):
    """Returns (model, token windows): a built-in model on the packaged corpus, or a random Llama on random tokens."""
    from agentqat.data import load_corpus, sample_windows, tokenize
    from agentqat.models import load_model

    if name in BUILTIN:
        loaded = load_model(BUILTIN[name])
        ids = tokenize(loaded.tokenizer, load_corpus("lee-news").evaluation[:200_000])
        return loaded.model, sample_windows(ids, TOKENS, WINDOWS, seed, bos=loaded.bos.window_token)
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(**RANDOM_SHAPES[name])
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config).eval()
    generator = torch.Generator().manual_seed(seed)
    return model, torch.randint(0, config.vocab_size, (WINDOWS, TOKENS), generator=generator)


def measure(name: str, seed: int) -> dict:
    """Returns one model's figures (run in its own process)."""
    from agentqat.arena.quality import compare, reference_of
    from agentqat.levels import build_database, level_config, open_database
    from agentqat.models import model_facts
    from agentqat.polish.blocks import block_modules
    from agentqat.quant.registry import quantize_weight
    from agentqat.strategy.apply import strategy_applied
    from agentqat.strategy.calibration import Calibration
    from agentqat.strategy.document import WeightGene, parse_strategy
    from agentqat.strategy.resolve import resolve_strategy

    (model, windows), load_cpu, load_wall = _timed(lambda: _model(name, seed))
    facts = model_facts(model, name)
    gene = WeightGene(bits=4, group_size=64, symmetric=False, rounding="rtn")
    level = level_config(gene)
    calibration = Calibration(f"scale-bench-{seed}", {})
    reference, reference_cpu, _ = _timed(lambda: reference_of(model, windows))
    with tempfile.TemporaryDirectory() as cache:
        os.environ["AGENTQAT_CACHE_DIR"] = cache  # the level goes to a scratch directory, deleted afterwards
        directory, build_cpu, build_wall = _timed(lambda: build_database(model, name, calibration, (level,)))
        level_bytes = sum(path.stat().st_size for path in directory.glob("*.safetensors"))
        database = open_database(model, name, calibration, (level,))
        document = {"name": "w4", "default": {"weight": {"bits": 4, "group_size": 64, "symmetric": False, "rounding": "rtn"}}}
        resolved = resolve_strategy(parse_strategy(document), facts)
        first = facts.linears[0].name
        assert database.weight(first, resolved.modules[first], None) is not None, "the strategy's modules must read the level"

        def screen():
            with strategy_applied(model, resolved, None, None, database):
                return compare(model, reference)

        comparison, screen_cpu, screen_wall = _timed(screen)
    block = block_modules(model, 0)
    stats, calibration_cpu, _ = _timed(lambda: _block_stats(model, block, windows[:1]))
    linears = dict(model.named_modules())
    gptq = WeightGene(bits=4, group_size=64, symmetric=False, rounding="gptq")
    config = level_config(gptq).weight

    def gptq_block():
        for module in block:
            quantize_weight(linears[module].weight.detach().float(), config, stats[module])

    _, gptq_cpu, _ = _timed(gptq_block)
    weights = sum(info.in_features * info.out_features for info in facts.linears)
    return {
        "model": name, "parameters": facts.num_parameters, "linear_weights": weights, "layers": facts.num_layers,
        "hidden": facts.hidden_size, "vocab": facts.vocab_size, "random_weights": name not in BUILTIN,
        "load_cpu_s": load_cpu, "load_wall_s": load_wall, "reference_cpu_s": reference_cpu,
        "level_build_cpu_s": build_cpu, "level_build_wall_s": build_wall, "level_bytes": level_bytes,
        "level_bits_per_weight": 8 * level_bytes / weights, "screen_cpu_s": screen_cpu, "screen_wall_s": screen_wall,
        "screen_kl": comparison.kl.mean().item(), "calibration_1_window_cpu_s": calibration_cpu,
        "gptq_block_cpu_s": gptq_cpu, "gptq_level_cpu_s": gptq_cpu * facts.num_layers,
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    }  # fmt: skip


@torch.inference_mode()
def _block_stats(model, block, windows) -> dict:
    """Returns the LayerStats of one block's modules on `windows` (all modules' Hessians of a 1B model would not fit)."""
    from agentqat.quant.base import LayerStats

    modules = dict(model.named_modules())
    inputs = {}
    handles = [modules[name].register_forward_pre_hook(lambda _m, args, name=name: inputs.setdefault(name, args[0])) for name in block]
    try:
        model(input_ids=windows, use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
    stats = {}
    for name, x in inputs.items():
        x = x.reshape(-1, x.shape[-1]).float()
        stats[name] = LayerStats(x.T @ x / len(x), x.abs().mean(0), x.abs().amax(0), len(x))
    return stats


def fit(rows: list[dict], key: str) -> tuple[float, float]:
    """Returns (a, b) of key = a * size^b (size: parameters or linear weights, FITTED), least squares in log-log."""
    x = np.log([row[FITTED[key]] for row in rows])
    y = np.log([row[key] for row in rows])
    b, log_a = np.polyfit(x, y, 1)
    return math.exp(log_a), b


def _human(value: float, key: str) -> str:
    if key.endswith("bytes"):
        return f"{value / 2**30:.2f} GiB" if value >= 2**30 else f"{value / 2**20:.0f} MiB"
    if value >= 3600:
        return f"{value / 3600:.1f} h"
    return f"{value / 60:.1f} min" if value >= 120 else f"{value:.2f} s"


def render(document: dict) -> str:
    rows, fits = document["rows"], document["fits"]
    lines = [
        "# Cost against model size (bench/scale.py)", "",
        f"{document['machine']}, torch {document['torch']}, {document['threads']} thread(s), {document['date']}. "
        f"Screening: {WINDOWS} windows of {TOKENS} tokens. CPU seconds of the measuring process.", "",
        "| model | parameters | screen (level reads + compare) | references | RTN level build | GPTQ level (1 block x layers) | peak RSS | level bytes (bits/weight) |",
        "|---|---|---|---|---|---|---|---|",
    ]  # fmt: skip
    for row in rows:
        kind = " (random weights)" if row["random_weights"] else ""
        lines.append(
            f"| {row['model']}{kind} | {row['parameters'] / 1e9:.3f}B | {row['screen_cpu_s']:.2f} s | {row['reference_cpu_s']:.2f} s | "
            f"{row['level_build_cpu_s']:.2f} s | {_human(row['gptq_level_cpu_s'], 's')} | {_human(row['peak_rss_bytes'], 'bytes')} | "
            f"{_human(row['level_bytes'], 'bytes')} ({row['level_bits_per_weight']:.2f}) |"
        )
    lines += ["", "Fits, cost = a x size^b, and what they give at 8B and 70B (this CPU, one thread):", "",
              "| cost | size | a | b | " + " | ".join(TARGETS) + " |", "|---|---|---|---|" + "---|" * len(TARGETS)]  # fmt: skip
    for key, (a, b) in fits.items():
        cells = " | ".join(_human(value, key) for value in document["extrapolated"][key].values())
        lines.append(f"| {key} | {FITTED[key]} | {a:.3g} | {b:.2f} | {cells} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("reports/scale"))
    parser.add_argument("--models", default=",".join([*BUILTIN, *RANDOM_SHAPES]))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)  # the subprocess's model
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.one:
        print(json.dumps(measure(args.one, args.seed)))
        return
    rows = []
    (args.out / "models").mkdir(parents=True, exist_ok=True)
    for name in args.models.split(","):
        measured = args.out / "models" / f"{name}.json"  # kept: a rerun measures only the models not measured yet
        if not measured.exists():
            started = time.perf_counter()
            command = [sys.executable, __file__, "--one", name, "--threads", str(args.threads), "--seed", str(args.seed)]
            output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
            measured.write_text(output.strip().splitlines()[-1] + "\n")
            print(f"{name}: {time.perf_counter() - started:.0f} s", flush=True)
        rows.append(json.loads(measured.read_text()))
    fits = {key: fit(rows, key) for key in FITTED} if len(rows) >= 2 else {}
    document = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores", "torch": torch.__version__,
        "threads": args.threads, "date": time.strftime("%Y-%m-%d"), "windows": WINDOWS, "tokens": TOKENS,
        "rows": rows, "fits": fits, "extrapolated": {key: {t: a * sizes[FITTED[key] == "linear_weights"] ** b for t, sizes in TARGETS.items()} for key, (a, b) in fits.items()},
    }  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "scale.json").write_text(json.dumps(document, indent=2) + "\n")
    (args.out / "scale.md").write_text(render(document))
    print(render(document))


if __name__ == "__main__":
    main()
