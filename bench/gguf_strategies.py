"""Measures strategies on [engine] arenas with llama.cpp itself: each (arena, strategy document) pair is exported by
the project's own llama-quantize (`agentqat export --format gguf`: llama.cpp's levels as it made them, agentqat's own
blocks written in place) and llama-perplexity --kl-divergence scores the file on each `--text` (default: the held-out
split, the test split and the GPL-3 text the project never searched on). Appends one JSON record per (arena,
strategy, text) to `--out`, skipping those it holds, and prints the table. No model file is kept.

    .venv/bin/python bench/gguf_strategies.py smollm2-gguf-gptq:reports/gguf-gptq/uniform-iq4nl-gptq.json \
        smollm2-gguf-gptq-tight:reports/gguf-gptq/uniform-iq4nl-gptq.json --out reports/gguf-gptq/engine.jsonl
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from agentqat.arena.config import load_arena
from agentqat.engines.measure import EngineWorkspace
from agentqat.export import export, prepare_source
from agentqat.strategy.document import strategy_id


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pairs", nargs="+", help="ARENA:STRATEGY.json")
    parser.add_argument("--text", default="heldout,test,reports/unseen/gpl-3.txt")
    parser.add_argument("--chunks", type=int, default=16)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    done = {(r["arena"], r["strategy_id"], r["text"]) for r in map(json.loads, args.out.read_text().splitlines())} if args.out.exists() else set()
    for pair in args.pairs:
        arena_name, _, path = pair.partition(":")
        arena, document = load_arena(arena_name), json.loads(Path(path).read_text())
        identity = strategy_id(document)
        texts = [text for text in args.text.split(",") if (arena.name, identity, text) not in done]
        if not texts:
            continue
        workspace = EngineWorkspace(arena.model, arena.corpus)
        with tempfile.TemporaryDirectory() as scratch:
            file = export(prepare_source(document, arena), "gguf", Path(scratch) / "out", arena.deploy) / "model.gguf"
            for text in texts:
                engine = workspace.measure(file, text, args.chunks)
                line = {"arena": arena.name, "strategy": path, "strategy_id": identity, "name": document.get("name"), "text": text,
                        "file_bytes": engine.file_bytes, "bits_per_weight": engine.bits_per_weight, "kl": engine.as_dict()["kl"]}  # fmt: skip
                args.out.parent.mkdir(parents=True, exist_ok=True)
                with args.out.open("a") as handle:
                    handle.write(json.dumps(line, sort_keys=True) + "\n")
                print(f"{arena.name:24} {str(document.get('name'))[:28]:28} {text[-20:]:20} {engine.file_bytes:>11,} B  "
                      f"KL {engine.kl.mean_kl:.4f}  top {engine.kl.same_top:.3f}  ppl {engine.kl.perplexity:.3f}", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
