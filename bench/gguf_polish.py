"""Measures polished GGUF strategies with llama.cpp itself: for each polish directory (agentqat polish on an [engine]
arena), the strategy is exported twice by the project's own llama-quantize, as it is and with its polished blocks
(`agentqat export --format gguf [--polished DIR]`), and llama-perplexity --kl-divergence scores both files on each
`--text` (default: the corpus's test split, which neither the polish nor its choice read, and the GPL-3 text the
project never searched on). Beside each, the arena's own KL of the same file on the test split (the polish's
`results.jsonl`, stage test), for the arena/engine agreement. Appends one JSON record per (polish, file, text) to
`--out` (skipping those it holds) and prints the table. No model file is kept.

    .venv/bin/python bench/gguf_polish.py runs/gguf-polish/stock-iq4nl runs/gguf-polish/tight-iq4nl --out reports/gguf-polish/engine.jsonl
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


def _arena_test_kl(directory: Path) -> float | None:
    """Returns the arena's mean KL of the final strategy on the test split (None when the polish played none)."""
    results = [json.loads(line) for line in (directory / "results.jsonl").read_text().splitlines()]
    kls = [r["quality"]["kl"] for r in results if r["stage"].startswith("test") and r.get("quality")]
    return sum(kls) / len(kls) if kls else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("polishes", nargs="+", type=Path)
    parser.add_argument("--text", default="test,reports/unseen/gpl-3.txt")
    parser.add_argument("--chunks", type=int, default=16)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    done = {(r["polish"], r["file"], r["text"]) for r in map(json.loads, args.out.read_text().splitlines())} if args.out.exists() else set()
    for directory in args.polishes:
        record = json.loads((directory / "polish.json").read_text())
        arena = load_arena(record["arena"])
        workspace = EngineWorkspace(arena.model, arena.corpus)
        selected = record["selected"]["strategy"]
        for kind in ("unpolished", "polished"):
            texts = [text for text in args.text.split(",") if (directory.name, kind, text) not in done]
            if not texts:
                continue
            source = prepare_source(record["strategy"], arena, polished=directory if kind == "polished" else None)
            with tempfile.TemporaryDirectory() as scratch:
                path = export(source, "gguf", Path(scratch) / "out", arena.deploy) / "model.gguf"
                for text in texts:
                    engine = workspace.measure(path, text, args.chunks)
                    line = {"polish": directory.name, "arena": arena.name, "file": kind, "text": text, "strategy_id": strategy_id(record["strategy"]),
                            "selected_on_heldout": selected, "arena_test_kl": _arena_test_kl(directory) if kind == selected else None,
                            "file_bytes": engine.file_bytes, "bits_per_weight": engine.bits_per_weight, "kl": engine.as_dict()["kl"]}  # fmt: skip
                    args.out.parent.mkdir(parents=True, exist_ok=True)
                    with args.out.open("a") as handle:
                        handle.write(json.dumps(line, sort_keys=True) + "\n")
                    print(f"{directory.name:16} {kind:10} {text[-24:]:24} {engine.file_bytes:>11,} B  KL {engine.kl.mean_kl:.4f}  "
                          f"top {engine.kl.same_top:.3f}  ppl {engine.kl.perplexity:.3f}", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
