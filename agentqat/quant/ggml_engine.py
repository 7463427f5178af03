"""GGML types as llama.cpp's own `llama-quantize` makes them, with an importance matrix from the arena's calibration
split: rounding "imatrix" on a GGUF format.

    format       rounding   made by                                        bits per weight
    gguf_q4_0    imatrix    llama-quantize --imatrix (Q4_0)                 4.5
    gguf_q4_1    imatrix    ... Q4_1                                        5.0
    gguf_q5_0    imatrix    ... Q5_0                                        5.5
    gguf_q5_1    imatrix    ... Q5_1                                        6.0
    gguf_q8_0    imatrix    ... Q8_0                                        8.5
    gguf_iq4_nl  imatrix    ... IQ4_NL (a non-linear 16-value codebook)     4.5

These weights exist only where llama.cpp made them: an arena whose level ladder holds them reads them from its level
database (`agentqat.levels`), which asks the engine (`agentqat.engines.levels`) for one file per type; quantizing
them anywhere else is an error the match records. All are blocks of 32 along the input, so they apply to every
tensor whose input width is a multiple of 32 (SmolLM2's 576 and Gemma 3's 640 included). The 256-wide k- and
i-quants are not levels yet: on those models they fit `ffn_down` alone.
"""

from __future__ import annotations

import torch

from agentqat.quant.base import LayerStats, WeightQuant, WeightQuantizer
from agentqat.quant.ggml import GGML_BLOCK, GGML_TYPES, GgmlType
from agentqat.quant.registry import Method, register
from agentqat.quant.storage import scale_and_min, scales_only

ENGINE_ROUNDING = "imatrix"
IQ4_NL = GgmlType("gguf_iq4_nl", "IQ4_NL", 4, False)
ENGINE_TYPES = (*GGML_TYPES, IQ4_NL)
ENGINE_TYPE_OF_FORMAT = {t.format: t for t in ENGINE_TYPES}


def _made_by_engine(ggml_type: GgmlType) -> WeightQuantizer:
    def quantize(weight: torch.Tensor, config: WeightQuant, stats: LayerStats | None = None) -> torch.Tensor:
        """Raises: these weights come from llama-quantize through an arena's level database only."""
        raise ValueError(
            f"{ggml_type.type_name} with rounding {ENGINE_ROUNDING} is made by llama.cpp's llama-quantize with the "
            "arena's importance matrix; only an arena whose [levels] ladder holds it can play it"
        )

    quantize.__name__ = f"{ggml_type.format}_{ENGINE_ROUNDING}"
    return quantize


def engine_method(ggml_type: GgmlType) -> Method:
    """Returns the Method of a GGML type made by llama-quantize with an importance matrix."""
    return Method(
        name=f"{ggml_type.format}-{ENGINE_ROUNDING}", format=ggml_type.format, rounding=ENGINE_ROUNDING,
        quantize=_made_by_engine(ggml_type), storage=scale_and_min if ggml_type.has_min else scales_only,
        label=f"GGUF's {ggml_type.type_name}", deploy_targets=frozenset({"fake-quant", "gguf"}), bits=(ggml_type.bits,),
        group_sizes=(GGML_BLOCK,), scales=("fp16",), clips=(1.0,), scaling="min/max" if ggml_type.has_min else "absmax",
        searched=False,
    )  # fmt: skip


def is_engine_made(config: WeightQuant) -> bool:
    """Returns whether llama-quantize makes this config's weights (rounding imatrix on a GGUF format)."""
    return config.rounding == ENGINE_ROUNDING and config.format in ENGINE_TYPE_OF_FORMAT


for _type in ENGINE_TYPES:
    register(engine_method(_type))
