"""Measures a GGUF comparison's winners with llama.cpp itself: for every run of the comparison, its best survivor of
the arena's last stage (what `agentqat export RUN --best` takes; runs that have not finished are left for later) is
exported as the exact scored file (`agentqat export --format gguf`: llama-quantize's levels, agentqat's own blocks
such as GPTQ's and a GPTQ head written in place), and llama-perplexity --kl-divergence scores it on each `--text`
(default: the corpus's test split, which no search read, and the GPL-3 text the project never searched on). llama.cpp's stock file the arena's budget is made
from (`--stock`, with the arena's importance matrix) is measured on the same texts. Appends one JSON record per
(run or stock file, text) to `--out` (skipping those it holds), writes each winner's strategy to
`<comparison>/winners/gguf-<run>.json`, and prints the table. `agentqat report` reads the records.

    .venv/bin/python bench/gguf_winners.py runs/compare-gguf [--text test,reports/unseen/gpl-3.txt] [--stock IQ4_NL]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from agentqat.engines.measure import EngineWorkspace
from agentqat.export import export, prepare_source
from agentqat.export.select import best_of_run
from agentqat.rundir.paths import ENGINE_FILE, SUMMARY_FILE
from agentqat.rundir.store import write_json_atomic
from agentqat.strategy.document import strategy_id


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("comparison", type=Path)
    parser.add_argument("--text", default="test,reports/unseen/gpl-3.txt")
    parser.add_argument("--chunks", type=int, default=16)
    parser.add_argument("--stock", default="IQ4_NL", help="llama.cpp's stock types (with the imatrix) to measure too")
    parser.add_argument("--out", type=Path, default=None, help=f"default: <comparison>/{ENGINE_FILE}")
    args = parser.parse_args()
    out = args.out or args.comparison / ENGINE_FILE
    records = list(map(json.loads, out.read_text().splitlines())) if out.exists() else []
    done = {(r.get("run") or r["stock"], r["text"]) for r in records}
    runs = sorted(path for path in (args.comparison / "runs").iterdir() if (path / SUMMARY_FILE).is_file())  # finished runs
    workspace = None
    for run in runs:
        texts = [text for text in args.text.split(",") if (run.name, text) not in done]
        if not texts:
            continue
        document, arena, figures = best_of_run(run)
        workspace = workspace or EngineWorkspace(arena.model, arena.corpus)
        (args.comparison / "winners").mkdir(exist_ok=True)
        write_json_atomic(args.comparison / "winners" / f"gguf-{run.name}.json", document)
        with tempfile.TemporaryDirectory() as directory:  # the export: llama.cpp's levels, agentqat's own blocks in place
            path = export(prepare_source(document, arena), "gguf", Path(directory) / "out", arena.deploy) / "model.gguf"
            for text in texts:
                engine = workspace.measure(path, text, args.chunks)
                record = {"run": run.name, "text": text, "strategy_id": strategy_id(document), "arena": figures,
                          "file_bytes": engine.file_bytes, "bits_per_weight": engine.bits_per_weight, "kl": engine.as_dict()["kl"]}  # fmt: skip
                with out.open("a") as handle:
                    handle.write(json.dumps(record, sort_keys=True) + "\n")
                print(f"{run.name:16} {text[-24:]:24} {engine.file_bytes:>11,} B  KL {engine.kl.mean_kl:.4f}  top {engine.kl.same_top:.3f}  ppl {engine.kl.perplexity:.3f}", flush=True)
    for type_name in filter(None, args.stock.split(",")):
        texts = [text for text in args.text.split(",") if (type_name, text) not in done]
        if not texts:
            continue
        arena = best_of_run(runs[0])[1]
        workspace = workspace or EngineWorkspace(arena.model, arena.corpus)
        path = workspace.stock(type_name, with_imatrix=True)  # with the imatrix of 32 x 512 calibration tokens, as the arena's
        for text in texts:
            engine = workspace.measure(path, text, args.chunks)
            record = {"stock": type_name, "imatrix": True, "text": text, "file_bytes": engine.file_bytes,
                      "bits_per_weight": engine.bits_per_weight, "kl": engine.as_dict()["kl"]}  # fmt: skip
            with out.open("a") as handle:
                handle.write(json.dumps(record, sort_keys=True) + "\n")
            print(f"stock {type_name:10} {text[-24:]:24} {engine.file_bytes:>11,} B  KL {engine.kl.mean_kl:.4f}  top {engine.kl.same_top:.3f}  ppl {engine.kl.perplexity:.3f}", flush=True)


if __name__ == "__main__":
    main()
