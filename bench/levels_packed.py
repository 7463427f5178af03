"""Packed levels against float32 levels on SmolLM2-135M: bytes per weight on disk, and the time to read one level
(every linear module) back as float32 weights.

Each level is quantized once (RTN and HQQ, which need no calibration statistics: GPTQ and AWQ levels store the same
tensors as RTN's, codes and integer zeros, AWQ one float32 divisor per input channel more) and written twice in a
temporary cache directory: packed, by `agentqat.levels.build_database` (format 2), and as every module's float32
weight in one safetensors file (format 1, what the database stored before). Both are read back module by module:
from the page cache (warm) and with the file's pages dropped first (`posix_fadvise`, cold: from disk). Read times
are this process's CPU time at one torch thread (an arena's `compute_threads`), the fastest of the repeats, so that
other users' load on a shared machine does not count; cold reads are also given in wall time (the disk's share).
The packed reads are checked bit for bit against the float32 weights.

    nice -n 19 .venv/bin/python bench/levels_packed.py [--model smollm2-135m] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from agentqat.levels import level_config, level_name
from agentqat.levels.database import LevelDatabase, build_database, module_bytes
from agentqat.models import load_model, quantizable_linears
from agentqat.quant import quantize_weight
from agentqat.strategy.calibration import Calibration
from agentqat.strategy.document import WeightGene

LEVELS = (
    WeightGene(bits=3, group_size=64),
    WeightGene(bits=4, group_size=64),
    WeightGene(bits=4, group_size=64, rounding="hqq"),
    WeightGene(bits=4, group_size=32, symmetric=True, scale="pow2"),
    WeightGene(bits=8, group_size=0),
)


def fastest(work, repeats: int, clock=time.process_time) -> float:
    """Returns the fewest seconds `work()` took over `repeats` calls, on `clock` (this process's CPU time)."""
    times = []
    for _ in range(repeats):
        began = clock()
        work()
        times.append(clock() - began)
    return min(times)


def drop(path: Path) -> None:
    """Drops a file's pages from the page cache (they are clean: the file was fsynced)."""
    with open(path, "rb") as file:
        os.fsync(file.fileno())
        os.posix_fadvise(file.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)


def both_clocks(work) -> tuple[float, float]:
    """Returns the (CPU, wall) seconds of one call of `work()`."""
    cpu, wall = time.process_time(), time.perf_counter()
    work()
    return time.process_time() - cpu, time.perf_counter() - wall


def cold(path: Path, work, repeats: int) -> tuple[float, float]:
    """Returns the fewest CPU and wall seconds of `work()` with `path`'s pages dropped before each call."""
    runs = []
    for _ in range(repeats):
        drop(path)
        runs.append(both_clocks(work))
    return min(cpu for cpu, _ in runs), min(wall for _, wall in runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    loaded = load_model(args.model)
    linears = quantizable_linears(loaded.model)
    weights = sum(linear.weight.numel() for linear in linears.values())
    print(f"{args.model}: {len(linears)} linear modules, {weights:,} weights; 1 torch thread, CPU seconds unless wall")
    header = (f"{'level':<28}{'float32 B/w':>12}{'packed B/w':>11}{'bits/w':>7}{'ratio':>7}{'plan':>7}"
              f"{'f32 warm':>10}{'pk warm':>9}{'f32 cold':>10}{'pk cold':>9}{'f32 cold wall':>15}{'pk cold wall':>14}")  # fmt: skip
    rows = []
    with tempfile.TemporaryDirectory(dir=Path.home()) as directory:
        os.environ["AGENTQAT_CACHE_DIR"] = directory
        calibration = Calibration("bench-no-statistics", {})
        for gene in LEVELS:
            config = level_config(gene)
            started = time.process_time()
            build_database(loaded.model, args.model, calibration, (config,))
            build = time.process_time() - started
            database = LevelDatabase(Path(directory) / "levels" / f"{args.model}-{calibration.key}", (config,), calibration.key)
            packed_path = database.path(config)
            assert database.packed_modules(config) == len(linears)
            float32 = {name: quantize_weight(linear.weight, config.weight).contiguous() for name, linear in linears.items()}
            float32_path = Path(directory) / f"{level_name(config)}-float32.safetensors"
            save_file(float32, str(float32_path))
            for name, weight in float32.items():
                assert torch.equal(database.weight(name, config, None).view(torch.int32), weight.view(torch.int32)), name
            del float32

            def read_float32():
                with safe_open(str(float32_path), framework="pt") as handle:
                    for name in linears:
                        handle.get_tensor(name).clone()  # every byte touched, whether get_tensor maps or copies

            def read_packed():
                level = LevelDatabase(database.directory, (config,), calibration.key)  # opened afresh, as a worker does
                for name in linears:
                    level.weight(name, config, None)

            read_float32(), read_packed()
            warm = fastest(read_float32, args.repeats), fastest(read_packed, args.repeats)
            cold_float32, cold_packed = cold(float32_path, read_float32, args.repeats), cold(packed_path, read_packed, args.repeats)
            sizes = float32_path.stat().st_size, packed_path.stat().st_size
            plan = sum(module_bytes(config, info) for info in loaded.facts.linears)
            rows.append((level_name(config), *sizes, plan, *warm, cold_float32, cold_packed, build))
            print(header if len(rows) == 1 else "", end="\n" if len(rows) == 1 else "")
            print(f"{level_name(config):<28}{sizes[0] / weights:>12.3f}{sizes[1] / weights:>11.3f}{8 * sizes[1] / weights:>7.2f}"
                  f"{sizes[0] / sizes[1]:>6.1f}x{8 * plan / weights:>7.2f}{warm[0]:>10.3f}{warm[1]:>9.3f}{cold_float32[0]:>10.3f}"
                  f"{cold_packed[0]:>9.3f}{cold_float32[1]:>15.3f}{cold_packed[1]:>14.3f}", flush=True)  # fmt: skip
            float32_path.unlink()
    print(f"\n(bits/w: the packed file's bits per weight; plan: agentqat.levels.database.module_bytes, what `agentqat plan` "
          f"reports, in bits per weight; build: the packed levels took {', '.join(f'{row[-1]:.1f}' for row in rows)} CPU s "
          f"to quantize, check and write)")  # fmt: skip


if __name__ == "__main__":
    main()
