"""The output head inside a GGML type by GPTQ, for an [engine] arena with `embedding_rounding = "gptq"`.

On SmolLM2 and Gemma 3 the head is the token embedding (tied), a fifth of SmolLM2's weights, and llama-quantize
rounds it with no knowledge of what it computes. Here its GGML blocks come from `agentqat.quant.ggml_gptq`:
llama.cpp's scale search, then GPTQ's indices against the head's input Hessian (X^T X / tokens of the final hidden
states on the calibration windows). The blocks are the arena's embedding in every match and are written into the
GGUF by the export (same type, same bytes). An untied head gets the blocks; its token embedding stays llama.cpp's.

    <cache>/levels/<model>-<calibration key>/head-<TYPE>-gptq.safetensors     the blocks (uint8 rows, as the GGUF)
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from filelock import FileLock
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from agentqat.defaults import cache_dir
from agentqat.engines.ggml_blocks import GgmlBlocks, decode, encode
from agentqat.layerwise import model_device
from agentqat.progress import Reporter, phase
from agentqat.quant.ggml_gptq import gptq_blocks

EMBEDDING, HEAD = "model.embed_tokens", "lm_head"


def head_module(model: nn.Module) -> str:
    """Returns the module whose weight is the output head: the token embedding when the head is tied to it."""
    tied = model.get_output_embeddings().weight is model.get_input_embeddings().weight
    return EMBEDDING if tied else HEAD


@torch.inference_mode()
def head_hessian(model: nn.Module, windows: torch.Tensor, batch_size: int = 2) -> torch.Tensor:
    """Returns X^T X / tokens (float32, on the CPU) of the output head's input over the base model's forward on
    `windows`."""
    head = model.get_output_embeddings()
    width = head.weight.shape[1]
    gram = torch.zeros(width, width, dtype=torch.float64)
    tokens = 0

    def record(_module: nn.Module, inputs: tuple) -> None:
        nonlocal tokens
        x = inputs[0].reshape(-1, width).to("cpu", torch.float64)
        gram.add_(x.T @ x)
        tokens += x.shape[0]

    handle = head.register_forward_pre_hook(record)
    try:
        for batch in windows.split(batch_size):
            model(input_ids=batch.to(model_device(model)), use_cache=False)
    finally:
        handle.remove()
    return (gram / tokens).to(torch.float32)


def head_blocks_path(model_name: str, calibration_key: str, type_name: str) -> Path:
    """Returns the file caching the head's blocks of a model, calibration and GGML type."""
    return cache_dir() / "levels" / f"{model_name}-{calibration_key}" / f"head-{type_name}-gptq.safetensors"


def head_blocks(
    model: nn.Module, model_name: str, calibration_key: str, windows: torch.Tensor, type_name: str, reporter: Reporter | None = None,
) -> dict[str, GgmlBlocks]:  # fmt: skip
    """Returns {head module: its blocks in `type_name`} by GPTQ against the head's input on the calibration
    `windows`, computed once (phase "GPTQ of the output head") and cached by model, calibration and type."""
    path = head_blocks_path(model_name, calibration_key, type_name)
    path.parent.mkdir(parents=True, exist_ok=True)
    name = head_module(model)
    with FileLock(str(path) + ".lock"):
        if not path.exists():
            weight = model.get_output_embeddings().weight.detach().to("cpu", torch.float32)
            detail = f"{type_name}, {weight.shape[0]:,} x {weight.shape[1]} weights against {windows.shape[0]} calibration windows"
            with phase(reporter, "GPTQ of the output head", detail=detail):
                blocks = gptq_blocks(weight, type_name, head_hessian(model, windows))
            staging = path.with_suffix(".tmp")
            metadata = {"module": name, "type": type_name, "columns": json.dumps(blocks.shape[1])}
            save_file({"blocks": torch.from_numpy(encode(blocks))}, str(staging), metadata=metadata)
            staging.replace(path)
    with safe_open(str(path), "pt") as handle:
        metadata = handle.metadata()
        raw = handle.get_tensor("blocks").numpy()
    return {metadata["module"]: decode(raw, metadata["type"], json.loads(metadata["columns"]))}
