"""Prints how the arena's KL and llama.cpp's own KL agree on an [engine] arena (default smollm2-gguf): for every
uniform ladder level and `--mixes` random allocations over the ladder (the random generator, seeded), the arena's
mean KL on the evaluation split (its confirm stage's 3 x 4 windows of 512 tokens, every token scored) and
llama-perplexity --kl-divergence on the same split (16 consecutive chunks of 512, the second half of each scored) of
the GGUF file the export writes. Prints both, their ratio, and Spearman's rank correlation; appends the records to
`--out`.

    .venv/bin/python bench/gguf_agreement.py [--arena smollm2-gguf] [--mixes 6] [--out reports/gguf/agreement.jsonl]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

from agentqat.arena.config import load_arena
from agentqat.arena.match import Workbench
from agentqat.arena.request import MatchRequest
from agentqat.export.gguf_engine import write_mix
from agentqat.generators.on_ladder import on_ladder
from agentqat.generators.random import RandomGenerator
from agentqat.levels import arena_ladder, level_name
from agentqat.quant.ggml_engine import ENGINE_TYPE_OF_FORMAT
from agentqat.session.evolve import search_space
from agentqat.strategy.document import parse_strategy, strategy_id
from agentqat.strategy.resolve import resolve_strategy


def documents(arena, facts, mixes: int, seed: int) -> list[dict]:
    """Returns one uniform document per ladder level and `mixes` random ladder allocations within the budget."""
    from dataclasses import asdict

    ladder = arena_ladder(arena.levels, facts)
    uniform = [{"name": f"uniform-{level_name(c)}", "default": {"weight": asdict(c.weight)}} for c in ladder]
    mixed = RandomGenerator(search_space(arena)).propose([], mixes, np.random.default_rng(seed))
    return uniform + [on_ladder(document, search_space(arena), np.random.default_rng(seed)) for document in mixed]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arena", default="smollm2-gguf")
    parser.add_argument("--mixes", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--chunks", type=int, default=16)
    parser.add_argument("--out", type=Path, default=Path("reports/gguf/agreement.jsonl"))
    args = parser.parse_args()
    arena = load_arena(args.arena)
    bench = Workbench(arena)
    bench.prepare(args.seed)
    facts = bench.loaded.facts
    files = bench.engine_files()
    stage = arena.stages[-1]
    done = {r["strategy_id"]: r for r in map(json.loads, args.out.read_text().splitlines())} if args.out.exists() else {}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for document in documents(arena, facts, args.mixes, args.seed):
        identity = strategy_id(document)
        if identity in done:
            continue
        results = [bench.play(MatchRequest(document, stage.name, args.seed, window_set=k)) for k in range(stage.window_sets)]
        if any(result.outcome != "ok" for result in results):
            print(f"{document['name']}: {results[0].outcome} {results[0].message}")
            continue
        resolved = resolve_strategy(parse_strategy(document), facts)
        types = {name: ENGINE_TYPE_OF_FORMAT[c.weight.format].type_name for name, c in resolved.modules.items()}
        with tempfile.TemporaryDirectory() as out:
            path = write_mix(files, types, Path(out))
            engine = bench._engine.measure(path, "evaluation", args.chunks)
        record = {
            "strategy_id": identity, "name": document["name"], "document": document, "bits": results[0].cost.bits_per_weight,
            "arena_kl": float(np.mean([r.quality.kl for r in results])),
            "arena_perplexity": float(np.mean([r.quality.perplexity for r in results])),
            "engine_kl": engine.kl.mean_kl, "engine_same_top": engine.kl.same_top, "engine_perplexity": engine.kl.perplexity,
            "file_bytes": engine.file_bytes,
        }  # fmt: skip
        with args.out.open("a") as handle:
            handle.write(json.dumps(record, sort_keys=True) + "\n")
        done[identity] = record
        print(f"{record['name'][:40]:40} {record['bits']:.3f} bits {record['file_bytes']:>11,} B  arena KL {record['arena_kl']:.4f}  engine KL {record['engine_kl']:.4f}", flush=True)
    records = list(done.values())
    arena_kl = [r["arena_kl"] for r in records]
    engine_kl = [r["engine_kl"] for r in records]
    rho, p = spearmanr(arena_kl, engine_kl)
    ratio = np.array(engine_kl) / np.array(arena_kl)
    print(f"{len(records)} strategies: Spearman rho {rho:.3f} (p {p:.2g}); engine KL / arena KL: median {np.median(ratio):.3f}, "
          f"range {ratio.min():.3f}-{ratio.max():.3f}")  # fmt: skip


if __name__ == "__main__":
    main()
