"""GGML's simple block types (what a GGUF file stores) through the gguf package's own quantizers: each block of 32
weights along the input gets an fp16 scale d, and the `_1` types an fp16 minimum m besides.

    format      GGML type  codes                     value           bits per weight
    gguf_q4_0   Q4_0       0..15, d = block absmax/-8   d * (q - 8)     4 + 16/32 = 4.5
    gguf_q4_1   Q4_1       0..15, min/max              d * q + m       4 + 32/32 = 5.0
    gguf_q5_0   Q5_0       0..31, d = block absmax/-16  d * (q - 16)    5 + 16/32 = 5.5
    gguf_q5_1   Q5_1       0..31, min/max              d * q + m       5 + 32/32 = 6.0
    gguf_q8_0   Q8_0       -127..127, d = absmax/127   d * q           8 + 16/32 = 8.5

The arena measures exactly what the file holds: quantize is `gguf.quants.quantize` then `gguf.quants.dequantize`
(llama.cpp's reference rounding; the export requantizes with the same call). `symmetric` does not apply (the type
fixes it), scales are the type's fp16 ones and blocks are 32 wide, so these formats need input widths divisible by
32. The gguf package is imported when a weight is quantized. Generators draw these formats only under the gguf deploy
target (`searched=False`): on the built-in SmolLM2, whose weights come from a Q4_1 GGUF file, gguf_q4_1 gives the
base model back exactly, a property of the model file that a default search should not be steered by.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from agentqat.quant.base import DEFAULT_ROUNDING, LayerStats, WeightQuant, WeightQuantizer
from agentqat.quant.registry import Method, register
from agentqat.quant.storage import scale_and_min, scales_only

GGML_BLOCK = 32


@dataclass(frozen=True)
class GgmlType:
    """A GGML block type as a weight format: its format name, the GGML type name, code width and whether blocks
    keep a minimum."""

    format: str
    type_name: str
    bits: int
    has_min: bool


GGML_TYPES = (
    GgmlType("gguf_q4_0", "Q4_0", 4, False),
    GgmlType("gguf_q4_1", "Q4_1", 4, True),
    GgmlType("gguf_q5_0", "Q5_0", 5, False),
    GgmlType("gguf_q5_1", "Q5_1", 5, True),
    GgmlType("gguf_q8_0", "Q8_0", 8, False),
)
GGML_TYPE_OF_FORMAT = {t.format: t for t in GGML_TYPES}


def ggml_blocks(weight: torch.Tensor, type_name: str) -> np.ndarray:
    """Returns `weight` [out, in] quantized by gguf.quants into `type_name` blocks: uint8 [out, bytes per row]."""
    from gguf import GGMLQuantizationType, quants

    if weight.shape[-1] % GGML_BLOCK:
        raise ValueError(f"{type_name} blocks are {GGML_BLOCK} wide; in_features {weight.shape[-1]} is not a multiple")
    array = np.ascontiguousarray(weight.detach().to("cpu", torch.float32).numpy())
    return quants.quantize(array, GGMLQuantizationType[type_name])


def ggml_values(blocks: np.ndarray, type_name: str) -> torch.Tensor:
    """Returns the float32 values gguf.quants.dequantize reads from `type_name` blocks (what transformers loads)."""
    from gguf import GGMLQuantizationType, quants

    return torch.from_numpy(np.ascontiguousarray(quants.dequantize(blocks, GGMLQuantizationType[type_name])))


def _quantizer(ggml_type: GgmlType) -> WeightQuantizer:
    def quantize(weight: torch.Tensor, config: WeightQuant, stats: LayerStats | None = None) -> torch.Tensor:
        """Returns `weight` through gguf.quants' quantize and dequantize of this GGML type."""
        if config.bits != ggml_type.bits or config.group_size != GGML_BLOCK:
            raise ValueError(
                f"{ggml_type.format} stores {ggml_type.bits}-bit codes in blocks of {GGML_BLOCK}, got bits="
                f"{config.bits}, group_size={config.group_size}"
            )
        return ggml_values(ggml_blocks(weight, ggml_type.type_name), ggml_type.type_name).reshape(weight.shape).to(weight.device)

    quantize.__name__ = ggml_type.format
    return quantize


def ggml_method(ggml_type: GgmlType) -> Method:
    """Returns the Method of a GGML block type (served by llama.cpp through a GGUF file, or as fake quantization)."""
    return Method(
        name=ggml_type.format, format=ggml_type.format, rounding=DEFAULT_ROUNDING, quantize=_quantizer(ggml_type),
        storage=scale_and_min if ggml_type.has_min else scales_only, label=f"GGUF's {ggml_type.type_name}",
        deploy_targets=frozenset({"fake-quant", "gguf"}), bits=(ggml_type.bits,), group_sizes=(GGML_BLOCK,),
        scales=("fp16",), clips=(1.0,), scaling="min/max" if ggml_type.has_min else "absmax",
        baseline={"weight": {"group_size": GGML_BLOCK}}, searched=False,
    )  # fmt: skip


for _type in GGML_TYPES:
    register(ggml_method(_type))
