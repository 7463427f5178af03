"""Prints what the level database costs and saves on an arena with a ladder (default smollm2-3bit): building or
opening it, reading one level for every module against quantizing that level on the fly, and a DB-backed
screening match (ladder offspring of the uniform level: a weight swap, then the forward pass) against a bare
forward pass over the same tokens.

    .venv/bin/python bench/levels.py [--arena smollm2-3bit] [--matches 8]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from agentqat.arena.config import load_arena
from agentqat.arena.match import Workbench
from agentqat.arena.request import MatchRequest
from agentqat.generators.evopress import EvoGenerator
from agentqat.levels import arena_ladder, level_name
from agentqat.models import quantizable_linears
from agentqat.strategy.apply import quantize_module
from agentqat.strategy.space import SearchSpace


def play_and_time(workbench: Workbench, documents: list[dict], windows: torch.Tensor) -> tuple:
    """Returns the first match played on the first stage (cold), the matches of the other documents, and the
    seconds of 3 bare forward passes over `windows`."""
    stage, seed = workbench.arena.stages[0], workbench.arena.seed
    cold = workbench.play(MatchRequest(documents[0], stage.name, seed))
    results = [workbench.play(MatchRequest(document, stage.name, seed)) for document in documents[1:]]
    bare = []
    with torch.inference_mode():
        for _ in range(3):
            began = time.perf_counter()
            workbench.loaded.model(input_ids=windows)
            bare.append(time.perf_counter() - began)
    return cold, results, bare


def ladder_documents(workbench: Workbench, count: int, seed: int = 0) -> list[dict]:
    """Returns the uniform ladder level and `count - 1` of its offspring, as the evo generator proposes them."""
    arena, facts = workbench.arena, workbench.loaded.facts
    space = SearchSpace(facts, arena.bits_budget, ladder=arena_ladder(arena.levels, facts))
    return EvoGenerator(space).propose([], count, np.random.default_rng(seed))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arena", default="smollm2-3bit")
    parser.add_argument("--matches", type=int, default=8)
    args = parser.parse_args()
    arena = load_arena(args.arena)
    workbench = Workbench(arena)
    started = time.perf_counter()
    database = workbench.levels()
    print(f"level database: {len(database.levels)} levels opened (built where missing) in {time.perf_counter() - started:.1f} s")
    level = database.levels[len(database.levels) // 2]
    calibration = workbench.calibration(arena.calibration_windows)
    started = time.perf_counter()
    for name in quantizable_linears(workbench.loaded.model):
        database.weight(name, level, calibration.key)
    read = time.perf_counter() - started
    started = time.perf_counter()
    for name, linear in quantizable_linears(workbench.loaded.model).items():
        quantize_module(linear, level, calibration.stats[name], torch.float32)
    made = time.perf_counter() - started
    print(f"one level ({level_name(level)}), every module: read from the database {read:.2f} s, quantized on the fly {made:.1f} s")

    stage = arena.stages[0]
    workbench.prepare(arena.seed)
    windows = workbench.windows(stage, arena.seed, 0)
    documents = ladder_documents(workbench, args.matches + 1)
    cold, results, bare = play_and_time(workbench, documents, windows)
    match = statistics.median(r.seconds for r in results)
    swap = statistics.median(r.cost.quantize_seconds for r in results)
    print(f"DB-backed screening match ({windows.numel()} tokens, {arena.compute_threads} thread): first {cold.seconds:.2f} s "
          f"(every module read), then median {match:.2f} s of which weight swap {swap:.3f} s; bare forward "
          f"{statistics.median(bare):.2f} s; ratio {match / statistics.median(bare):.2f}; outcomes {[r.outcome for r in results]}")


if __name__ == "__main__":
    main()
