"""GGUF winners found on SmolLM2-135M carried to another model and measured there by llama.cpp, beside that model's
stock IQ4_NL + imatrix file and the uniform IQ4_NL-by-GPTQ file.

Each winner (a committed strategy, e.g. `reports/<comparison>/winners/gguf-evo-seed0.json`) is carried to the model by
relative depth (`agentqat transfer`: same module roles, the source layer at the same depth) and exported as GGUF on
its own arena (`--arena`, the comparison's) played on that model (`Arena.on_model`: the ladder built again for the
model, llama-quantize's levels with an importance matrix from the model's own 32 x 512 calibration tokens, GPTQ's
and the head's from the model's own calibration windows of seed 0; the arena's head type). Nothing was searched on
the model. llama.cpp's stock IQ4_NL + imatrix file (`--pure`, Q8_0 embedding: `smollm2-gguf-gptq`'s IQ4_NL level
file on the model, the same imatrix) and the uniform IQ4_NL-by-GPTQ strategy on `smollm2-gguf-gptq` are measured
the same way. llama-perplexity --kl-divergence scores every file against the model's f32 GGUF on each text: the
corpus's test split and the GPL-3 text. Appends one JSON record per (arm, text) to `--out`, skipping those it holds,
and prints them. No model file is kept.

    .venv/bin/python bench/gguf_transfer.py --model gemma3-270m --arena smollm2-gguf-gptq-tight \
        --out reports/gguf-transfer/gemma3-270m.jsonl reports/compare-gguf-gptq-tight-2/winners/gguf-evo-seed0.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from agentqat.arena.config import load_arena
from agentqat.engines.levels import engine_level
from agentqat.engines.measure import EngineWorkspace
from agentqat.export import export, prepare_source
from agentqat.models import load_facts
from agentqat.strategy.transfer import transfer

REFERENCE_ARENA = "smollm2-gguf-gptq"  # the stock file's and the uniform GPTQ file's
UNIFORM_GPTQ = Path("reports/gguf-gptq/uniform-iq4nl-gptq.json")
STOCK = "stock IQ4_NL + imatrix"
TEXTS = ("test", "reports/unseen/gpl-3.txt")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("winners", nargs="+", type=Path, help="strategy files found on the arena's model")
    parser.add_argument("--model", default="gemma3-270m", help="the model to carry them to (default: %(default)s)")
    parser.add_argument("--arena", default=REFERENCE_ARENA, help="the winners' arena (default: %(default)s)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    done = {(r["arm"], r["text"]) for r in map(json.loads, args.out.read_text().splitlines())} if args.out.exists() else set()
    reference, source = load_arena(REFERENCE_ARENA), load_arena(args.arena)
    workspace = EngineWorkspace(args.model, reference.corpus)
    source_facts, target_facts = load_facts(source.model), load_facts(args.model)
    arms = [(STOCK, reference), (str(UNIFORM_GPTQ), reference), *((str(winner), source) for winner in args.winners)]
    for arm, arena in arms:
        texts = [text for text in TEXTS if (arm, text) not in done]
        if not texts:
            continue
        arena, extra = arena.on_model(args.model, keep_levels=True), {"arena": arena.name}
        with tempfile.TemporaryDirectory() as scratch:
            scratch = Path(scratch)
            if arm == STOCK:
                file = engine_level(workspace, "IQ4_NL", arena.engine.embedding, arena.calibration_windows, arena.window_tokens)
            else:
                moved = transfer(json.loads(Path(arm).read_text()), source_facts, target_facts)
                extra |= {"source_bits": moved.source_bits, "target_bits": moved.target_bits, "repaired": moved.repaired}
                file = export(prepare_source(moved.document, arena), "gguf", scratch / "out", arena.deploy) / "model.gguf"
            for text in texts:
                engine = workspace.measure(file, text)
                line = {"arm": arm, "model": args.model, "text": text, "file_bytes": engine.file_bytes, "kl": engine.as_dict()["kl"], **extra}
                with args.out.open("a") as handle:
                    handle.write(json.dumps(line, sort_keys=True) + "\n")
                print(f"{arm[-44:]:44} {text[-20:]:20} {engine.file_bytes:>11,} B  KL {engine.kl.mean_kl:.4f}  ppl {engine.kl.perplexity:.3f}", flush=True)


if __name__ == "__main__":
    main()
