"""Compares generators at an equal match budget over several search seeds on one arena, and prints the best
survivor of each run (KL, perplexity, bits, score) with the mean over seeds.

    .venv/bin/python bench/generators.py [--generators random,evo] [--seeds 0,1,2] [--budget 100]
                                         [--population 8] [--workers 2] [--runs runs/bench-generators]

Every run is an ordinary evolve run directory (`agentqat show` reads it; re-running the script resumes them).
The runs share one pool of Ray evaluator actors (and the LLM runs one vLLM server on SmolLM2), so the model
loads once; the arena's seed fixes the windows, so every run is scored on the same tokens. The clear-winner
stop is off: every run spends the whole budget. The LLM generator's per-layer probes count against it.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from agentqat.arena.config import load_arena
from agentqat.session import LlmSettings, Resources, evolve_manifest, run_evolve


def run_one(arena, shared: Resources, name: str, seed: int, args: argparse.Namespace):
    """Returns the outcome of one evolve run (resumed when its directory exists) on the shared pool and server."""
    directory = args.runs / f"{name}-seed{seed}"
    manifest = None if (directory / "manifest.json").exists() else evolve_manifest(
        arena, shared.llm if name == "llm" else None, generator=name, seed=seed, population=args.population,
        generations=10_000, patience=10_000, match_budget=args.budget, stop_when_clear=False,
    )  # fmt: skip
    return run_evolve(directory, manifest, resources=shared)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arena", default="smollm2-default")
    parser.add_argument("--generators", default="random,evo")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--budget", type=int, default=100, help="matches per run")
    parser.add_argument("--population", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--runs", type=Path, default=Path("runs/bench-generators"))
    args = parser.parse_args()

    arena = load_arena(args.arena)
    llm = LlmSettings() if "llm" in args.generators.split(",") else None
    rows = []
    with Resources(arena, args.workers, llm=llm, log_dir=args.runs) as shared:
        for name in args.generators.split(","):
            for seed in (int(s) for s in args.seeds.split(",")):
                outcome = run_one(arena, shared, name, seed, args)
                best = next((row for row in outcome.rows if row.survives), None)
                rows.append((name, seed, outcome, best))
                agg = best.aggregate if best else None
                print(
                    f"{name:8s} seed {seed}: {outcome.matches:4d} matches, {len(outcome.generations)} generations, "
                    + (f"best {agg.strategy_name} KL {agg.kl:.4f} ppl {agg.perplexity:.2f} bits {agg.bits_per_weight:.3f} "
                       f"score {best.score:.4f}" if best else "no survivor"),
                    flush=True,
                )  # fmt: skip
    print(f"\narena {arena.name}, budget {args.budget} matches, bits budget {arena.bits_budget}; best survivor per run")
    print(f"{'generator':10s} {'KL mean':>8s} {'KL sd':>7s} {'ppl mean':>9s} {'bits mean':>9s} {'score mean':>10s}  per seed KL")
    for name in args.generators.split(","):
        bests = [best for g, _, _, best in rows if g == name and best is not None]
        if not bests:
            print(f"{name:10s} no survivor")
            continue
        kls = [b.aggregate.kl for b in bests]
        print(
            f"{name:10s} {statistics.mean(kls):8.4f} {statistics.stdev(kls) if len(kls) > 1 else 0:7.4f} "
            f"{statistics.mean(b.aggregate.perplexity for b in bests):9.2f} "
            f"{statistics.mean(b.aggregate.bits_per_weight for b in bests):9.3f} "
            f"{statistics.mean(b.score for b in bests):10.4f}  " + " ".join(f"{kl:.4f}" for kl in kls)
        )


if __name__ == "__main__":
    main()
