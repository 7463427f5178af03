"""Measures the rates `agentqat plan` multiplies, on SmolLM2-135M on this machine, and writes them as JSON (by
default agentqat/plan/rates-cpu.json, which the plan reads). About a minute on 2 cores; run it at low priority:

    nice -n 19 .venv/bin/python bench/rates.py [--threads 1] [--out FILE]

forward      a match's evaluation (agentqat.arena.quality.compare on 2 windows of 512 tokens) per token x forward
             parameter (linear weights and the output head)
calibration  agentqat.strategy.calibration.collect_stats on 2 windows, per token x (forward parameters + Hessian entries)
rtn          RTN W4 g64 of every linear module, per weight
gptq         GPTQ W3 g64 act-order on random weights of 6 shapes against a random Hessian, fitted (non-negative
             least squares on the relative error) as a + b x out x in + c x out x in^2 seconds per module
level files  4 layers' RTN weights written as one safetensors file (fsync) and read back module by module from disk
             (the file's pages dropped with posix_fadvise first; the page-cache rate is recorded beside it)
Each timing is the fastest of its repeats, in this process's CPU time (one thread: what a quiet machine's core
takes, whatever else runs) except the level files' wall time.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from scipy.optimize import nnls

from agentqat.arena.quality import compare, reference_of
from agentqat.data import load_corpus, sample_windows, tokenize
from agentqat.levels import level_config
from agentqat.models import load_model, quantizable_linears
from agentqat.plan.rates import RATES_FILE
from agentqat.plan.shape import hessian_entries, shape_of
from agentqat.quant.gptq import gptq_quantize
from agentqat.strategy.apply import quantize_module
from agentqat.strategy.calibration import collect_stats
from agentqat.strategy.document import WeightGene

GPTQ_SHAPES = ((512, 512), (2048, 512), (512, 2048), (2048, 2048), (4096, 1024), (4096, 2048))  # (out, in)


def fastest(work, repeats: int = 2, clock=time.process_time) -> float:
    """Returns the fewest seconds `work()` took over `repeats` calls, on `clock`: this process's CPU time by default
    (with one thread, the wall time a quiet machine would take: other users' load does not count), wall time for
    the disk."""
    times = []
    for _ in range(repeats):
        began = clock()
        work()
        times.append(clock() - began)
    return min(times)


def gptq_fit(seed: int = 0) -> tuple[list[float], list[list[float]]]:
    """Returns GPTQ's fitted (a, b, c) and the measured [out, in, seconds] per shape."""
    generator = torch.Generator().manual_seed(seed)
    config = level_config(WeightGene(bits=3, group_size=64, rounding="gptq")).weight
    samples = []
    for out_features, in_features in GPTQ_SHAPES:
        weight = torch.randn(out_features, in_features, generator=generator) * 0.02
        inputs = torch.randn(2 * in_features, in_features, generator=generator)
        hessian = inputs.T @ inputs / inputs.shape[0]
        samples.append([out_features, in_features, fastest(lambda: gptq_quantize(weight, config, hessian))])
    terms = np.array([[i, o * i, o * i * i] for o, i, _ in samples], dtype=float)
    seconds = np.array([s for _, _, s in samples])
    relative = terms / seconds[:, None]  # least relative error: small modules count as much as large ones
    scale = relative.max(axis=0)  # columns of very different magnitudes
    solution, _ = nnls(relative / scale, np.ones(len(samples)))
    return list(solution / scale), samples


def level_file_rates(weights: dict[str, torch.Tensor]) -> tuple[float, float, float]:
    """Returns the seconds per byte of writing `weights` as one safetensors file (to disk: fsync), of reading each
    module back from disk (the file's pages dropped from the page cache first) and from the page cache."""
    total = sum(w.numel() * w.element_size() for w in weights.values())
    with tempfile.TemporaryDirectory(dir=Path.home()) as directory:
        path = str(Path(directory) / "level.safetensors")

        def write():
            save_file(weights, path)
            with open(path, "rb") as file:
                os.fsync(file.fileno())

        def drop():
            with open(path, "rb") as file:
                os.posix_fadvise(file.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)

        def read():
            with safe_open(path, framework="pt") as handle:
                for name in weights:
                    handle.get_tensor(name).clone()  # every byte touched, whether get_tensor maps or copies

        written = fastest(write, clock=time.perf_counter)
        cold = fastest(lambda: (drop(), read()), clock=time.perf_counter)  # the pages dropped before each read
        warm = fastest(read, 3, clock=time.perf_counter)
        return written / total, cold / total, warm / total


def cpu_name() -> str:
    """Returns the CPU's model name and core count."""
    try:
        model = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        model = platform.processor() or platform.machine()
    return f"{model}, {os.cpu_count()} cores"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="torch threads, as an arena's compute_threads (default: %(default)s)")
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--out", type=Path, default=RATES_FILE)
    args = parser.parse_args()
    started = time.perf_counter()
    torch.set_num_threads(args.threads)
    loaded = load_model(args.model)
    model, shape = loaded.model, shape_of(loaded.model.config, args.model)
    corpus = load_corpus("lee-news")
    windows = sample_windows(tokenize(loaded.tokenizer, corpus.evaluation), 512, 2, 0)
    calibration_windows = sample_windows(tokenize(loaded.tokenizer, corpus.calibration), 512, 2, 0)
    tokens = windows.numel()

    reference = reference_of(model, windows)
    forward = fastest(lambda: compare(model, reference))
    print(f"forward: {forward:.2f} s for {tokens} tokens x {shape.forward_parameters:,} parameters")
    stats = {}
    calibration = fastest(lambda: stats.update(collect_stats(model, calibration_windows)), 1)
    calibration_work = calibration_windows.numel() * (shape.forward_parameters + hessian_entries(shape.facts))
    print(f"calibration: {calibration:.2f} s for {calibration_windows.numel()} tokens")

    linears = quantizable_linears(model)
    rtn_config = level_config(WeightGene(bits=4, group_size=64, rounding="rtn"))
    quantized = {}

    def rtn_all():
        for name, linear in linears.items():
            quantized[name] = quantize_module(linear, rtn_config, None, torch.float32).weight.contiguous()

    rtn = fastest(rtn_all, 1)
    print(f"rtn: {rtn:.2f} s for {shape.linear_weights:,} weights")
    (gptq_a, gptq_b, gptq_c), gptq_samples = gptq_fit()
    print(f"gptq: {gptq_samples} -> a {gptq_a:.3g} s per column, b {gptq_b:.3g} s per weight, c {gptq_c:.3g} s per weight-column")
    layer_weights = {name: weight for name, weight in quantized.items() if any(f".layers.{i}." in name for i in range(4))}
    write, read, warm = level_file_rates(layer_weights)
    print(f"level files: write {1 / write / 2**20:,.0f} MiB/s, read {1 / read / 2**20:,.0f} MiB/s from disk, {1 / warm / 2**20:,.0f} MiB/s from the page cache")

    document = {
        "machine": cpu_name(),
        "threads": args.threads,
        "measured": datetime.date.today().isoformat(),
        "model": args.model,
        "torch": torch.__version__,
        "bench": "bench/rates.py",
        "seconds": round(time.perf_counter() - started, 1),
        "rates": {
            "forward_s_per_token_param": forward / (tokens * shape.forward_parameters),
            "calibration_s_per_token_param": calibration / calibration_work,
            "rtn_s_per_weight": rtn / shape.linear_weights,
            "gptq_s_per_column": gptq_a,
            "gptq_s_per_weight": gptq_b,
            "gptq_s_per_weight_column": gptq_c,
            "level_write_s_per_byte": write,
            "level_read_s_per_byte": read,
        },
        "unused_rates": {"level_read_warm_s_per_byte": warm},
        "samples": {
            "forward": {"tokens": tokens, "forward_parameters": shape.forward_parameters, "seconds": forward},
            "calibration": {"tokens": calibration_windows.numel(), "hessian_entries": hessian_entries(shape.facts), "seconds": calibration},
            "rtn": {"weights": shape.linear_weights, "seconds": rtn},
            "gptq": [{"out": o, "in": i, "seconds": s, "fitted": gptq_a * i + gptq_b * o * i + gptq_c * o * i * i} for o, i, s in gptq_samples],
            "level_files": {"bytes": sum(w.numel() * w.element_size() for w in layer_weights.values())},
        },
    }
    args.out.write_text(json.dumps(document, indent=2) + "\n")
    print(f"wrote {args.out} in {document['seconds']} s")


if __name__ == "__main__":
    main()
