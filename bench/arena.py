"""Prints the arena's speed on the default model: a screening match with cached layers against a bare
forward pass over the same tokens; matches per hour with 1 and 2 Ray workers; layer-cache hit rates.

    .venv/bin/python bench/arena.py [--arena smollm2-default] [--matches 8]

Target: once layers are cached, a screening match takes at most 1.25x a bare forward pass.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from agentqat.arena.config import load_arena
from agentqat.arena.match import Workbench
from agentqat.arena.pool import EvaluatorPool
from agentqat.arena.request import MatchRequest


def strategies(count: int) -> list[dict]:
    """Returns `count` distinct cheap (RTN) strategies that share most of their layers' configs."""
    widths = (4, 5, 6, 8)
    return [
        {
            "name": f"bench-{i}",
            "default": {"weight": {"bits": widths[i % 4], "group_size": 64}},
            "rules": [{"layers": f"{i % 30}", "modules": ["mlp"], "weight": {"bits": 8}}],
        }
        for i in range(count)
    ]


def median_seconds(function, repeats: int = 3) -> float:
    """Returns the median wall time of `repeats` calls of `function`."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def screening_overhead(arena) -> None:
    workbench = Workbench(arena)
    stage = arena.stages[0]
    windows = workbench.windows(stage, arena.seed, 0)
    request = MatchRequest(strategies(1)[0], stage.name, arena.seed)
    cold = workbench.play(request)  # fills the reference and the layer cache
    match = median_seconds(lambda: workbench.play(request))
    with torch.inference_mode():
        bare = median_seconds(lambda: workbench.loaded.model(input_ids=windows))
    print(f"screening match ({windows.numel()} tokens, {arena.compute_threads} thread): cold {cold.seconds:.2f} s, "
          f"cached {match:.2f} s; bare forward {bare:.2f} s; ratio {match / bare:.2f} (target <= 1.25)")


def throughput(arena, workers: int, count: int) -> None:
    pool = EvaluatorPool(arena, workers=workers)
    stage = arena.stages[0].name
    pool.run([MatchRequest(d, stage, arena.seed) for d in strategies(workers)])  # references and first layers
    started = time.perf_counter()
    results = pool.run([MatchRequest(d, stage, arena.seed) for d in strategies(count)])
    elapsed = time.perf_counter() - started
    hits = sum(s["hits"] for s in pool.cache_stats())
    total = hits + sum(s["misses"] for s in pool.cache_stats())
    failures = sum(r.failed for r in results)
    print(f"{workers} worker(s): {count} screening matches in {elapsed:.1f} s = {3600 * count / elapsed:.0f} matches/hour; "
          f"layer cache {hits}/{total} hits ({hits / total:.0%}); failures {failures}")
    pool.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arena", default="smollm2-default")
    parser.add_argument("--matches", type=int, default=8)
    args = parser.parse_args()
    arena = load_arena(args.arena)
    screening_overhead(arena)
    for workers in (1, 2):
        throughput(arena, workers, args.matches)


if __name__ == "__main__":
    main()
