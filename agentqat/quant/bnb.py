"""bitsandbytes' own 4-bit formats through its own functions: NF4 and FP4 (blockwise absmax 4-bit codebooks). These
formats have fixed codebooks and absmax scales: `symmetric` does not apply, and pow2 scales or clipping are refused.
bitsandbytes is imported lazily (its import is slow).
"""

from __future__ import annotations

import torch

from agentqat.quant.base import DEFAULT_ROUNDING, LayerStats, WeightQuant, WeightQuantizer
from agentqat.quant.registry import Method, register
from agentqat.quant.storage import fp32_absmax

BNB_BLOCK_SIZES = (32, 64, 128, 256, 512, 1024, 2048, 4096)


def check_absmax(config: WeightQuant, bits: int) -> None:
    """Raises ValueError when the config asks for what bitsandbytes' `config.format` cannot do."""
    if config.bits != bits:
        raise ValueError(f"{config.format} stores {bits}-bit values, got bits={config.bits}")
    if config.scale != "fp16" or config.clip != 1.0:
        raise ValueError(f"{config.format} uses bitsandbytes' absmax scales: use scale 'fp16' and clip 1.0")


def _block_size(weight: torch.Tensor, config: WeightQuant) -> int:
    """Returns bitsandbytes' blocksize for the config's group size (in_features for group_size 0)."""
    size = config.group_size or weight.shape[1]
    if size not in BNB_BLOCK_SIZES or weight.shape[1] % size:
        raise ValueError(
            f"{config.format} needs a group size in {BNB_BLOCK_SIZES} dividing in_features {weight.shape[1]}, "
            f"got {config.group_size}"
        )
    return size


def _four_bit(weight: torch.Tensor, config: WeightQuant, quant_type: str) -> torch.Tensor:
    """Returns bitsandbytes' quantize_4bit / dequantize_4bit round trip of `weight`."""
    check_absmax(config, 4)
    from bitsandbytes import functional

    packed, state = functional.quantize_4bit(
        weight.contiguous(), blocksize=_block_size(weight, config), quant_type=quant_type
    )
    return functional.dequantize_4bit(packed, state).to(torch.float32)


def nf4(weight: torch.Tensor, config: WeightQuant, stats: LayerStats | None = None) -> torch.Tensor:
    """Returns `weight` through bitsandbytes' NF4 (normal-float 4-bit, blockwise absmax)."""
    return _four_bit(weight, config, "nf4")


def fp4(weight: torch.Tensor, config: WeightQuant, stats: LayerStats | None = None) -> torch.Tensor:
    """Returns `weight` through bitsandbytes' FP4 (blockwise absmax)."""
    return _four_bit(weight, config, "fp4")


def four_bit_method(name: str, quantize: WeightQuantizer) -> Method:
    """Returns the Method of a bitsandbytes 4-bit codebook: served as fake quantization (no engine of FACTS.md's
    serves bitsandbytes' codebooks; llama.cpp has no nf4/fp4 block type)."""
    return Method(
        name=name, format=name, rounding=DEFAULT_ROUNDING, quantize=quantize, storage=fp32_absmax,
        label=f"bitsandbytes' {name}", deploy_targets=frozenset({"fake-quant"}), bits=(4,),
        group_sizes=BNB_BLOCK_SIZES, scales=("fp16",), clips=(1.0,), scaling="absmax",
        baseline={"weight": {"group_size": 64}},
    )  # fmt: skip


register(four_bit_method("nf4", nf4))
register(four_bit_method("fp4", fp4))
