"""Prints the base model's perplexity as the arena computes it and as llama.cpp's `llama-perplexity` does, on the
same text and the same chunks: the evaluation split cut into consecutive chunks of 512 tokens, the first token of
each replaced by BOS where the model expects it (llama-perplexity's convention), the second half of each scored.
The two agree within a few percent only when windows open as the model expects (issue 26: on Gemma 3 270M the
arena printed 59.9 without BOS, where llama.cpp gives about 16).

    .venv/bin/python bench/bos_agreement.py [--model gemma3-270m] [--chunks 8]
"""

from __future__ import annotations

import argparse
import math

import torch
import torch.nn.functional as F

from agentqat.data import tokenize
from agentqat.engines.llama_cpp import perplexity as engine_perplexity
from agentqat.engines.measure import EngineWorkspace
from agentqat.models import BUILTIN_MODELS, builtin_gguf_path, load_model


@torch.inference_mode()
def second_half_perplexity(model, chunks: torch.Tensor) -> float:
    """Returns the perplexity over the second half of each chunk's predicted tokens (llama-perplexity's scoring)."""
    half = chunks.shape[1] // 2
    losses = []
    for chunk in chunks.split(2):
        logits = model(input_ids=chunk).logits[:, half - 1 : -1].float()
        losses.append(F.cross_entropy(logits.transpose(1, 2), chunk[:, half:], reduction="none").flatten())
    return math.exp(torch.cat(losses).mean().item())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="gemma3-270m")
    parser.add_argument("--corpus", default="lee-news")
    parser.add_argument("--chunks", type=int, default=8)
    parser.add_argument("--context", type=int, default=512)
    args = parser.parse_args()
    torch.set_num_threads(2)
    loaded = load_model(args.model)
    workspace = EngineWorkspace(args.model, args.corpus)
    text = workspace.text("evaluation")
    ids = tokenize(loaded.tokenizer, text.read_text(encoding="utf-8"))
    chunks = ids[: args.chunks * args.context].reshape(args.chunks, args.context).clone()
    ours = {}
    for opens_with_bos in (False, True):
        windows = chunks.clone()
        if opens_with_bos:
            windows[:, 0] = loaded.bos.token_id
        ours[opens_with_bos] = second_half_perplexity(loaded.model, windows)
    gguf = builtin_gguf_path(args.model) if args.model in BUILTIN_MODELS else workspace.base()
    theirs = engine_perplexity(workspace.engine, gguf, text, args.chunks, args.context)
    print(f"model {args.model}: windows open with BOS: {loaded.bos.add} (decided by {loaded.bos.source})")
    print(f"{args.chunks} chunks of {args.context} tokens of the evaluation split, second half of each scored")
    print(f"  arena, first token BOS      {ours[True]:9.3f}")
    print(f"  arena, first token as text  {ours[False]:9.3f}")
    print(f"  llama-perplexity ({gguf.name})  {theirs:9.3f}")
    chosen = ours[loaded.bos.add]
    print(f"  the arena's choice ({'BOS' if loaded.bos.add else 'text'}) differs from llama.cpp by {100 * (chosen / theirs - 1):+.2f}%")


if __name__ == "__main__":
    main()
