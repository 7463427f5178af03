"""Prints llama.cpp's own figures for uniform GGUF mixes whose token embedding (SmolLM2's output head too: it is
tied) takes another type than the linear weights: how much of the file the embedding is, and what quantizing it
costs in KL. All files by the project's llama-quantize with the calibration split's importance matrix (--pure),
measured by llama-perplexity --kl-divergence on the evaluation split (the arena's own split, not the test split).

    .venv/bin/python bench/gguf_embedding.py [--model smollm2-135m] [--linear IQ4_NL,Q5_0] [--embedding Q8_0,Q5_0,IQ4_NL,Q4_0]
"""

from __future__ import annotations

import argparse

from agentqat.engines.llama_cpp import quantize
from agentqat.engines.measure import EngineWorkspace


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--corpus", default="lee-news")
    parser.add_argument("--linear", default="IQ4_NL,Q5_0")
    parser.add_argument("--embedding", default="Q8_0,Q5_0,IQ4_NL,Q4_0")
    parser.add_argument("--chunks", type=int, default=16)
    args = parser.parse_args()
    workspace = EngineWorkspace(args.model, args.corpus)
    imatrix = workspace.imatrix()
    print(f"{'linear':8} {'embedding':9} {'MiB':>8} {'mean KL':>8} {'top-1':>6} {'ppl':>8}   (evaluation split, {args.chunks} x 512)")
    for linear in args.linear.split(","):
        for embedding in args.embedding.split(","):
            target = workspace.directory / "bench" / f"{linear}-embd-{embedding}.gguf"
            workspace.made(target, "llama-quantize", target.name, lambda path: quantize(
                workspace.engine, workspace.base(), path, linear, imatrix, pure=True, embedding_type=embedding))  # fmt: skip
            figures = workspace.measure(target, "evaluation", args.chunks)
            kl = figures.kl
            print(f"{linear:8} {embedding:9} {figures.file_bytes / 2**20:8.2f} {kl.mean_kl:8.4f} {kl.same_top:6.3f} {kl.perplexity:8.3f}", flush=True)


if __name__ == "__main__":
    main()
