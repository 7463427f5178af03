"""Prints the LLM generator's throughput and valid rate: proposals per minute and the share of replies that
became proposals (valid, within budget after repair, new), for the first generation (whole strategies) and
for later ones (mutations and recombinations of an elite), on the default model's search space.

    .venv/bin/python bench/llm.py [--backend vllm|transformers] [--count 8] [--rounds 2] [--seed 0]

The elite of the later rounds is the random generator's proposals ranked in order (their scores are
placeholders: the benchmark measures the generator, not the arena). The vLLM server is started here.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from agentqat.arena.config import load_arena
from agentqat.generators import Evaluated, make_generator
from agentqat.models import load_facts
from agentqat.serving.backends import make_backend
from agentqat.serving.server import VllmServer
from agentqat.strategy.space import SearchSpace


def measure(generator, population: list[Evaluated], count: int, rounds: int, seed: int, label: str) -> None:
    """Prints proposals per minute and the valid rate of `rounds` calls of propose(count)."""
    accepted, rejected = generator.accepted, generator.rejected
    started = time.perf_counter()
    proposals = sum(len(generator.propose(population, count, np.random.default_rng([seed, k]))) for k in range(rounds))
    seconds = time.perf_counter() - started
    replies = (generator.accepted - accepted) + (generator.rejected - rejected)
    reasons = [" ".join(r.data["reason"].split(": ", 1)[-1].split()[:3]) for r in generator.take_records() if r.stream == "rejections"]
    print(
        f"{label:28s} {proposals:3d} proposals from {replies:3d} replies in {seconds:6.1f} s: "
        f"{60 * proposals / seconds:5.1f} proposals/min, valid rate {proposals / max(replies, 1):.0%}; "
        f"rejections: { {k: reasons.count(k) for k in sorted(set(reasons))} }",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", default="vllm", choices=("vllm", "transformers"))
    parser.add_argument("--count", type=int, default=8, help="proposals asked per round")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    arena = load_arena()
    space = SearchSpace(load_facts(arena.model), arena.bits_budget)
    server = VllmServer().start() if args.backend == "vllm" else None
    try:
        if server:
            print(f"vLLM server ready in {server.start_seconds:.1f} s", flush=True)
        backend = make_backend(args.backend, server=server)
        generator = make_generator("llm", space, backend=backend)
        measure(generator, [], args.count, args.rounds, args.seed, "first generation (propose)")
        randoms = make_generator("random", space).propose([], 6, np.random.default_rng(args.seed))
        elite = [Evaluated(d, -0.5 - 0.1 * k, True, "ok", 0.2 + 0.05 * k, 4.2) for k, d in enumerate(randoms)]
        measure(generator, elite, args.count, args.rounds, args.seed + 1, "later (mutate/recombine/new)")
    finally:
        if server:
            server.stop()


if __name__ == "__main__":
    main()
