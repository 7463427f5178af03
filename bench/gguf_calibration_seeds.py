"""GPTQ inside IQ4_NL against llama.cpp's stock IQ4_NL + imatrix over calibration seeds, measured by llama.cpp.

For each seed, both arms read the same 32 x 512 calibration tokens: the windows the arena's seed draws from the
calibration split (`agentqat.data.sample_windows`, as every calibration in agentqat). The stock arm writes them as
text for llama-imatrix and quantizes with llama-quantize (IQ4_NL, --pure, Q8_0 embedding: the smollm2-gguf file);
the GPTQ arm is the uniform IQ4_NL-by-GPTQ strategy with its head by GPTQ in Q8_0 (smollm2-gguf-gptq's [engine]),
exported by agentqat. Both files are the same size; llama-perplexity --kl-divergence scores each on the test split
and the GPL-3 text. Appends one JSON record per (seed, arm, text) to `--out`, skipping those it holds, then prints
the exact Mann-Whitney test of the arms per text (agentqat.study.stats). No model file is kept.

    .venv/bin/python bench/gguf_calibration_seeds.py --seeds 0-4 --out reports/gguf-gptq/seeds.jsonl

`--model` plays both arms on another model (`smollm2-gguf-gptq` with its model replaced and no file budget), e.g.
the built-in Gemma 3 270M, whose rows are 640 wide:

    .venv/bin/python bench/gguf_calibration_seeds.py --model gemma3-270m --seeds 0 --out reports/gguf-gptq/gemma3-270m.jsonl
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from agentqat.arena.config import load_arena
from agentqat.arena.match import Workbench
from agentqat.engines.llama_cpp import importance_matrix, quantize
from agentqat.engines.measure import EngineWorkspace
from agentqat.export import export, prepare_source
from agentqat.study.stats import compare_arms

STRATEGY = Path("reports/gguf-gptq/uniform-iq4nl-gptq.json")
TEXTS = ("test", "reports/unseen/gpl-3.txt")


def _seeds(spec: str) -> list[int]:
    first, _, last = spec.partition("-")
    return list(range(int(first), int(last or first) + 1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0-4")
    parser.add_argument("--model", help="another model for both arms (default: the arena's, SmolLM2-135M)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    done = {(r["seed"], r["arm"], r["text"]) for r in map(json.loads, args.out.read_text().splitlines())} if args.out.exists() else set()
    base = load_arena("smollm2-gguf-gptq")
    base = base.on_model(args.model or base.model)  # GPTQ on the fly: the same values as the level
    document = json.loads(STRATEGY.read_text())
    for seed in _seeds(args.seeds):
        arena = base.model_copy(update={"seed": seed})
        workspace = EngineWorkspace(arena.model, arena.corpus)
        for arm in ("stock IQ4_NL + imatrix", "IQ4_NL by GPTQ"):
            texts = [text for text in TEXTS if (seed, arm, text) not in done]
            if not texts:
                continue
            with tempfile.TemporaryDirectory() as scratch:
                scratch = Path(scratch)
                if arm.startswith("stock"):
                    bench = Workbench(arena)
                    tokens, _ = bench._calibration_tokens(arena.calibration_windows)
                    text = scratch / "calibration.txt"
                    text.write_text("\n".join(bench.loaded.tokenizer.decode(window, skip_special_tokens=True) for window in tokens) + "\n")
                    imatrix = importance_matrix(workspace.engine, workspace.base(), text, scratch / "imatrix.gguf", arena.calibration_windows, arena.window_tokens)
                    file = quantize(workspace.engine, workspace.base(), scratch / "model.gguf", "IQ4_NL", imatrix, pure=True, embedding_type="Q8_0")
                else:
                    file = export(prepare_source(document, arena), "gguf", scratch / "out", arena.deploy) / "model.gguf"
                for text in texts:
                    engine = workspace.measure(file, text)
                    line = {"seed": seed, "arm": arm, "text": text, "file_bytes": engine.file_bytes, "kl": engine.as_dict()["kl"]}
                    with args.out.open("a") as handle:
                        handle.write(json.dumps(line, sort_keys=True) + "\n")
                    print(f"seed {seed} {arm:24} {text[-20:]:20} {engine.file_bytes:>11,} B  KL {engine.kl.mean_kl:.4f}  ppl {engine.kl.perplexity:.3f}", flush=True)
    records = [json.loads(line) for line in args.out.read_text().splitlines()]
    for text in TEXTS if len({r["seed"] for r in records}) > 1 else ():
        kl = {arm: [r["kl"]["mean_kl"] for r in records if r["arm"] == arm and r["text"] == text] for arm in ("IQ4_NL by GPTQ", "stock IQ4_NL + imatrix")}
        test = compare_arms("IQ4_NL by GPTQ", kl["IQ4_NL by GPTQ"], "stock IQ4_NL + imatrix", kl["stock IQ4_NL + imatrix"], f"engine KL, {text}")
        print(f"{text}: {test.sentence} (p = {test.p_two_sided:.4f}, delta {test.cliffs_delta:+.2f})")


if __name__ == "__main__":
    main()
