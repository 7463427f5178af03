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
import functools
import statistics
from dataclasses import asdict
from pathlib import Path

from agentqat.arena.config import load_arena
from agentqat.arena.pool import make_pool
from agentqat.arena.recorded import RecordedPlayer
from agentqat.evolve import EvolveSettings, evolve
from agentqat.generators import SearchSpace, make_generator
from agentqat.generators.layout import layout_id
from agentqat.llm.backends import VllmBackend
from agentqat.llm.server import VllmServer
from agentqat.models import load_facts
from agentqat.runs import EvolveJournal
from agentqat.sensitivity import measure
from agentqat.store import RunStore


def run_one(arena, pool, space, settings: EvolveSettings, directory: Path, server: VllmServer | None):
    """Returns the outcome of one evolve run in `directory` (resumed when it exists). The LLM generator gets
    the shared vLLM server and its sensitivity probes, counted against the match budget as in `evolve`."""
    manifest = {"kind": "evolve", "arena": arena.model_dump(), "settings": asdict(settings)}
    store = RunStore.open(directory) if (directory / "manifest.json").exists() else RunStore.create(directory, manifest)
    player = RecordedPlayer(pool.run, store)
    options, probes = {}, 0
    if settings.generator == "llm":
        sensitivities, probes = measure(player, arena, space.facts)
        options = {"backend": VllmBackend.for_server(server), "sensitivities": sensitivities}
    generator = make_generator(settings.generator, space, **options)
    identity = functools.partial(layout_id, facts=space.facts)
    outcome = evolve(generator, arena, player, settings, EvolveJournal(store), prior_matches=probes, identity=identity)
    if settings.generator == "llm":
        print(f"llm seed {settings.seed}: proposals accepted {generator.accepted}, rejected {generator.rejected}, repaired {generator.repaired}")
    return outcome


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
    space = SearchSpace(load_facts(arena.model), arena.bits_budget)
    pool = make_pool(arena, args.workers)
    server = VllmServer().start() if "llm" in args.generators.split(",") else None
    rows = []
    try:
        for name in args.generators.split(","):
            for seed in (int(s) for s in args.seeds.split(",")):
                settings = EvolveSettings(
                    generator=name, seed=seed, population=args.population, generations=10_000,
                    patience=10_000, match_budget=args.budget, stop_when_clear=False,
                )  # fmt: skip
                outcome = run_one(arena, pool, space, settings, args.runs / f"{name}-seed{seed}", server)
                best = next((row for row in outcome.rows if row.survives), None)
                rows.append((name, seed, outcome, best))
                agg = best.aggregate if best else None
                print(
                    f"{name:8s} seed {seed}: {outcome.matches:4d} matches, {len(outcome.generations)} generations, "
                    + (f"best {agg.strategy_name} KL {agg.kl:.4f} ppl {agg.perplexity:.2f} bits {agg.bits_per_weight:.3f} "
                       f"score {best.score:.4f}" if best else "no survivor"),
                    flush=True,
                )  # fmt: skip
    finally:
        pool.shutdown()
        if server:
            server.stop()
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
