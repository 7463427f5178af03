"""Levels made by llama.cpp: for each GGML type of an arena's ladder, one `llama-quantize --pure` file of the whole
model at that type with the arena's importance matrix (from its calibration split), read back exactly.

    <engine work dir>/levels/<imatrix name>/<TYPE>-embd-<EMBEDDING TYPE>.gguf

Every tensor llama-quantize quantizes is at TYPE, but for token_embd (and an untied output head), which take the
arena's embedding type (`--token-embedding-type`, `--output-tensor-type`): what a match plays with them is what a
GGUF file of the mix holds. `level_values` reads a level's linear weights with gguf.quants.dequantize (the values
llama.cpp computes with), in the model's row order; `level_bytes` their exact bytes, for the export.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch

from agentqat.engines.gguf_tensors import module_tensor_names, module_values
from agentqat.engines.llama_cpp import LlamaCpp, quantize
from agentqat.engines.measure import EngineWorkspace


@dataclass(frozen=True)
class EngineFiles:
    """An [engine] arena's llama.cpp files: the tools, the unquantized base GGUF, the importance matrix, the
    embedding's type, and the level file of each GGML type (what its matches played, byte for byte); with
    `embedding_rounding = "gptq"` also the output head's blocks (module name -> GgmlBlocks), which replace
    llama-quantize's in the file."""

    engine: LlamaCpp
    base: Path
    imatrix: Path
    embedding: str
    levels: Mapping[str, Path]
    head: Mapping[str, object] = field(default_factory=dict)


def level_path(workspace: EngineWorkspace, type_name: str, embedding_type: str, imatrix: Path) -> Path:
    """Returns the path of the level file of `type_name` (made from `imatrix`, embeddings at `embedding_type`)."""
    return workspace.directory / "levels" / imatrix.stem / f"{type_name}-embd-{embedding_type}.gguf"


def engine_level(workspace: EngineWorkspace, type_name: str, embedding_type: str, chunks: int, context: int) -> Path:
    """Returns the level file of `type_name`, made by llama-quantize with the calibration split's importance matrix
    (`chunks` chunks of `context` tokens) on first use."""
    imatrix = workspace.imatrix(chunks, context)
    target = level_path(workspace, type_name, embedding_type, imatrix)

    def make(path: Path) -> None:
        quantize(workspace.engine, workspace.base(), path, type_name, imatrix, pure=True, embedding_type=embedding_type)

    return workspace.made(target, "llama-quantize level", f"{type_name} with the imatrix", make)


def level_values(path: Path, module_names) -> dict[str, torch.Tensor]:
    """Returns the named modules' weights as the level file holds them (float32, the model's row order)."""
    from gguf import GGUFReader

    return module_values(GGUFReader(str(path)), module_names)


def embedding_values(path: Path) -> dict[str, torch.Tensor]:
    """Returns the token embedding (and an untied output head) as the level file holds them."""
    from gguf import GGUFReader

    reader = GGUFReader(str(path))
    names = {tensor.name for tensor in reader.tensors}
    wanted = [name for name, tensor in (("model.embed_tokens", "token_embd.weight"), ("lm_head", "output.weight")) if tensor in names]
    return module_values(reader, wanted)


def level_tensors(path: Path, module_names) -> dict[str, tuple[str, object]]:
    """Returns each module's GGUF tensor in the level file: (tensor name, the reader's tensor with its raw bytes)."""
    from gguf import GGUFReader

    reader = GGUFReader(str(path))
    tensors = {tensor.name: tensor for tensor in reader.tensors}
    return {module: (name, tensors[name]) for module, name in module_tensor_names(reader, module_names).items()}


def fixed_bytes(path: Path, module_names) -> int:
    """Returns the bytes of a level file that are not the named modules' weights: metadata and tokenizer, norms, the
    embedding (and an untied head). A mix of the same embedding type is this plus its linear weights' bytes."""
    return path.stat().st_size - sum(int(tensor.n_bytes) for _, tensor in level_tensors(path, module_names).values())


def linear_bits_within(file_bytes: int, fixed: int, weights: int) -> float:
    """Returns the bits per linear weight a file of at most `file_bytes` bytes leaves, given its `fixed` bytes."""
    return 8 * (file_bytes - fixed) / weights
