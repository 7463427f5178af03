"""Counts screening evaluations per hour on an arena with a ladder (default smollm2-3bit): evo offspring of the
uniform level played on the first stage by Ray evaluator actors (the product path), after every actor has built
its references and read its levels. Prints evals/hour, seconds per eval and the bare forward pass over the same
tokens, and where a match's time goes (in one process: weight swap, forward and KL, the rest).

    .venv/bin/python bench/screening.py [--arena smollm2-3bit] [--matches 60] [--workers 2]

Target (issue 15): at least 1,500 screening evaluations an hour on 2 cores.
"""

from __future__ import annotations

import argparse
import statistics
import time

from levels import ladder_documents, play_and_time  # bench/levels.py, beside this script

from agentqat.arena.config import load_arena
from agentqat.arena.match import Workbench
from agentqat.arena.pool import EvaluatorPool
from agentqat.arena.request import MatchRequest


def where_time_goes(workbench: Workbench, documents: list[dict]) -> None:
    """Prints the median split of an in-process screening match, and the bare forward pass."""
    arena, stage = workbench.arena, workbench.arena.stages[0]
    windows = workbench.windows(stage, arena.seed, 0)
    _, results, bare = play_and_time(workbench, documents, windows)
    total = statistics.median(r.seconds for r in results)
    swap = statistics.median(r.cost.quantize_seconds for r in results)
    forward_kl = statistics.median(r.cost.evaluate_seconds for r in results)
    print(f"one process, {arena.compute_threads} thread, {windows.numel()} tokens: match {total:.3f} s = weight swap {swap:.3f} s "
          f"+ forward and KL {forward_kl:.3f} s + rest {total - swap - forward_kl:.3f} s (parse, resolve, bits, verdict); "
          f"bare forward {statistics.median(bare):.3f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arena", default="smollm2-3bit")
    parser.add_argument("--matches", type=int, default=60)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--profile-matches", type=int, default=8)
    args = parser.parse_args()
    arena = load_arena(args.arena)
    stage = arena.stages[0].name
    workbench = Workbench(arena)
    workbench.prepare(arena.seed)
    documents = ladder_documents(workbench, args.matches + args.workers)
    where_time_goes(workbench, documents[: args.profile_matches + 1])
    del workbench
    pool = EvaluatorPool(arena, workers=args.workers)
    pool.run([MatchRequest(d, stage, arena.seed) for d in documents[: args.workers]])  # references, levels, first reads
    started = time.perf_counter()
    results = pool.run([MatchRequest(d, stage, arena.seed) for d in documents[args.workers :]])
    elapsed = time.perf_counter() - started
    pool.shutdown()
    failures = sum(r.failed for r in results)
    print(f"{args.workers} workers: {len(results)} screening evals in {elapsed:.1f} s = {3600 * len(results) / elapsed:.0f} evals/hour, "
          f"{elapsed / len(results):.2f} s per eval (wall), {statistics.median(r.seconds for r in results):.2f} s per eval "
          f"(in a worker); failures {failures}")


if __name__ == "__main__":
    main()
