"""Prints, for every quantization method on the whole default model: time to quantize all linear layers,
perplexity, KL to the base model, top-1 agreement and effective bits per weight.

    .venv/bin/python bench/quantizers.py [--model smollm2-135m] [--windows 8] [--only gptq,awq]

The model is loaded once; base log-probabilities and calibration statistics (32 x 512 tokens of the
calibration split) are computed once and shared by every method. Quantization time excludes calibration.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from agentqat import defaults
from agentqat.arena.quality import compare, reference_of
from agentqat.data import load_corpus, sample_windows, tokenize
from agentqat.models import load_model
from agentqat.strategy.apply import strategy_applied
from agentqat.strategy.bits import strategy_bits
from agentqat.strategy.calibration import calibration_key, load_or_collect
from agentqat.strategy.document import parse_strategy
from agentqat.strategy.resolve import resolve_strategy


def uniform(name: str, bits: int, outliers: dict | None = None, **weight) -> tuple[str, dict]:
    """Returns a (label, strategy document) quantizing every linear layer the same way."""
    document = {"name": name, "default": {"weight": {"bits": bits, "group_size": 64, "symmetric": False, **weight}}}
    if outliers:
        document["default"]["outliers"] = outliers
    return name, document


METHODS = [
    *(uniform(f"rtn-w{b}", b) for b in (8, 4, 3, 2)),
    *(uniform(f"rtn-mse-w{b}", b, clip="mse") for b in (4, 3)),
    uniform("rtn-pow2-sym-w4", 4, symmetric=True, scale="pow2"),
    *(uniform(f"gptq-w{b}", b, rounding="gptq") for b in (8, 4, 3)),
    *(uniform(f"awq-w{b}", b, rounding="awq") for b in (8, 4, 3)),
    *(uniform(f"hqq-w{b}", b, rounding="hqq") for b in (8, 4, 3)),
    uniform("nf4", 4, format="nf4"),
    uniform("fp4", 4, format="fp4"),
    uniform("fp8-e4m3", 8, format="fp8_e4m3", group_size=0, symmetric=True),
    uniform("llm-int8", 8, format="llm_int8", group_size=0, symmetric=True, outliers={"method": "llm_int8", "threshold": 6.0}),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=defaults.DEFAULT_MODEL)
    parser.add_argument("--corpus", default=defaults.DEFAULT_CORPUS)
    parser.add_argument("--windows", type=int, default=defaults.EVAL_WINDOWS)
    parser.add_argument("--calibration-windows", type=int, default=defaults.CALIBRATION_WINDOWS)
    parser.add_argument("--seed", type=int, default=defaults.SEED)
    parser.add_argument("--only", default="", help="comma-separated label prefixes to run")
    parser.add_argument("--json", default="", help="also write the rows to this JSON file")
    args = parser.parse_args()
    torch.set_num_threads(defaults.TORCH_THREADS)

    loaded = load_model(args.model)
    corpus = load_corpus(args.corpus)
    windows = sample_windows(tokenize(loaded.tokenizer, corpus.evaluation), defaults.WINDOW_TOKENS, args.windows, args.seed)
    calibration_windows = sample_windows(
        tokenize(loaded.tokenizer, corpus.calibration), defaults.WINDOW_TOKENS, args.calibration_windows, args.seed
    )
    started = time.perf_counter()
    key = calibration_key(loaded.facts.name, loaded.directory, corpus.source, calibration_windows)
    calibration = load_or_collect(loaded.model, key, calibration_windows)
    print(f"calibration statistics: {time.perf_counter() - started:.1f} s (0 when cached)")
    started = time.perf_counter()
    reference = reference_of(loaded.model, windows)
    forward_seconds = time.perf_counter() - started
    print(f"base: perplexity {reference.perplexity:.3f} on {args.windows} x {defaults.WINDOW_TOKENS} tokens, forward {forward_seconds:.1f} s")
    print(f"{'method':<18}{'quantize s':>11}{'ppl':>10}{'KL':>9}{'top-1':>8}{'bits/w':>8}")
    rows = []
    prefixes = [p for p in args.only.split(",") if p]
    for label, document in METHODS:
        if prefixes and not any(label.startswith(p) for p in prefixes):
            continue
        resolved = resolve_strategy(parse_strategy(document), loaded.facts)
        started = time.perf_counter()
        with strategy_applied(loaded.model, resolved, calibration) as applied:
            quantize_seconds = time.perf_counter() - started
            result = compare(loaded.model, reference)
        bits = strategy_bits(resolved, loaded.facts, applied.outlier_counts).bits_per_weight
        row = {
            "method": label,
            "quantize_seconds": quantize_seconds,
            "perplexity": result.perplexity,
            "kl": result.kl.mean().item(),
            "top1": result.top1.mean().item(),
            "bits_per_weight": bits,
        }
        rows.append(row)
        print(f"{label:<18}{quantize_seconds:>11.1f}{row['perplexity']:>10.2f}{row['kl']:>9.4f}{row['top1']:>8.3f}{bits:>8.3f}", flush=True)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"base_perplexity": reference.perplexity, "rows": rows}, handle, indent=2)


if __name__ == "__main__":
    main()
