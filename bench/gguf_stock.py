"""Measures llama.cpp's stock recipes of a model with llama.cpp itself: every type of `--types`, made by the
project's own llama-quantize with and without the importance matrix of the calibration split, scored by
llama-perplexity --kl-divergence against the f32 model on a split (default: test) or a text file. Appends one JSON
record per file to `--out` (skipping files it already holds), then prints the table.

    .venv/bin/python bench/gguf_stock.py [--model smollm2-135m] [--text test] [--out reports/gguf/stock-test.jsonl]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from agentqat.engines.measure import STOCK_TYPES, EngineWorkspace


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--corpus", default="lee-news")
    parser.add_argument("--text", default="test")
    parser.add_argument("--chunks", type=int, default=16)
    parser.add_argument("--types", default=",".join(STOCK_TYPES))
    parser.add_argument("--out", type=Path, default=Path("reports/gguf/stock-test.jsonl"))
    args = parser.parse_args()
    workspace = EngineWorkspace(args.model, args.corpus)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    done = {(r["stock"], r["imatrix"]) for r in map(json.loads, args.out.read_text().splitlines())} if args.out.exists() else set()
    for type_name in args.types.split(","):
        for imatrix in (False, True):
            if (type_name, imatrix) in done:
                continue
            figures = workspace.measure(workspace.stock(type_name, imatrix), args.text, args.chunks)
            record = {"model": args.model, "stock": type_name, "imatrix": imatrix, **figures.as_dict()}
            record["file"] = Path(record["file"]).name
            with args.out.open("a") as out:
                out.write(json.dumps(record, sort_keys=True) + "\n")
    records = sorted(map(json.loads, args.out.read_text().splitlines()), key=lambda r: r["file_bytes"])
    print(f"{'type':8} {'imatrix':7} {'MiB':>7} {'bpw':>6} {'mean KL':>8} {'top-1':>6} {'ppl':>8}   ({args.text}, {args.chunks} x 512)")
    for r in records:
        kl = r["kl"]
        print(f"{r['stock']:8} {str(r['imatrix']):7} {r['file_bytes'] / 2**20:7.2f} {r['bits_per_weight']:6.3f} {kl['mean_kl']:8.4f} {kl['same_top']:6.3f} {kl['perplexity']:8.3f}")


if __name__ == "__main__":
    main()
