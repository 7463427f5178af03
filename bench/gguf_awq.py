"""AWQ inside llama.cpp's types, measured by llama.cpp: the model folded by `agentqat fold-awq` quantized as llama.cpp's
stock IQ4_NL + imatrix recipe and as IQ4_NL by agentqat's GPTQ, beside the same two recipes on the unfolded model.

    stock IQ4_NL + imatrix             llama-quantize on the model (`agentqat engine-eval --stock IQ4_NL --imatrix`)
    AWQ, then stock IQ4_NL + imatrix   the same recipe on the folded model (its own imatrix, from the same windows)
    IQ4_NL by GPTQ                     the uniform IQ4_NL-by-GPTQ strategy on smollm2-gguf-gptq (head Q8_0 by GPTQ)
    AWQ, then IQ4_NL by GPTQ           the same strategy with the folded model as the arena's model

Every file is measured against the unfolded model's logits (llama-perplexity --kl-divergence, 16 x 512 tokens) on
each text: the corpus's test split (no fold, search or calibration read it) and the GPL-3 text. Appends one JSON
record per (arm, text) to `--out`, skipping those it holds, and prints them. No model file is kept.

    .venv/bin/agentqat fold-awq --arena smollm2-gguf --type IQ4_NL --out ~/smollm2-awq-iq4nl
    .venv/bin/python bench/gguf_awq.py --folded ~/smollm2-awq-iq4nl --out reports/gguf-awq/engine.jsonl

Another model (`agentqat fold-awq --model gemma3-270m ...`) is measured the same way, its GPTQ arms on
smollm2-gguf-gptq with the model replaced and no file budget (as `bench/gguf_calibration_seeds.py --model` does).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from agentqat.arena.config import load_arena
from agentqat.engines.gguf_fold import fold_record
from agentqat.engines.measure import EngineWorkspace
from agentqat.export import export, prepare_source

STRATEGY = Path("reports/gguf-gptq/uniform-iq4nl-gptq.json")
TEXTS = ("test", "reports/unseen/gpl-3.txt")
ARMS = ("stock IQ4_NL + imatrix", "AWQ, then stock IQ4_NL + imatrix", "IQ4_NL by GPTQ", "AWQ, then IQ4_NL by GPTQ")


def _file(arm: str, original: str, folded: Path, scratch: Path) -> Path:
    """Returns the GGUF file of `arm` (made under `scratch` or in the engine's cache)."""
    model = str(folded) if arm.startswith("AWQ") else original
    if "stock" in arm:
        return EngineWorkspace(model, "lee-news").stock("IQ4_NL", True)
    arena = load_arena("smollm2-gguf-gptq").on_model(model)  # GPTQ on the fly; the file budget is SmolLM2's
    return export(prepare_source(json.loads(STRATEGY.read_text()), arena), "gguf", scratch / "out", arena.deploy) / "model.gguf"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folded", type=Path, required=True, help="a directory agentqat fold-awq wrote")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    record = fold_record(args.folded)
    if record is None:
        parser.error(f"{args.folded} was not written by agentqat fold-awq (no awq-fold.json)")
    done = {(r["arm"], r["text"]) for r in map(json.loads, args.out.read_text().splitlines())} if args.out.exists() else set()
    reference = EngineWorkspace(record["model"], "lee-news")
    for arm in ARMS:
        texts = [text for text in TEXTS if (arm, text) not in done]
        if not texts:
            continue
        with tempfile.TemporaryDirectory() as scratch:
            file = _file(arm, record["model"], args.folded, Path(scratch))
            for text in texts:
                engine = reference.measure(file, text)
                line = {"arm": arm, "text": text, "file_bytes": engine.file_bytes, "fold_type": record["type"], "kl": engine.as_dict()["kl"]}
                with args.out.open("a") as handle:
                    handle.write(json.dumps(line, sort_keys=True) + "\n")
                print(f"{arm:34} {text[-20:]:20} {engine.file_bytes:>11,} B  KL {engine.kl.mean_kl:.4f}  ppl {engine.kl.perplexity:.3f}", flush=True)


if __name__ == "__main__":
    main()
