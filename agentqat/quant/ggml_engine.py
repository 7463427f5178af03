"""GGML types as llama.cpp's own `llama-quantize` makes them, with an importance matrix from the arena's calibration
split: rounding "imatrix" on a GGUF format. The gene's group_size is 32 for every one of them (llama.cpp picks the
block); `bits` is the type's code width, and the storage rule counts the rest of the type's exact bytes.

    format       type     block  bits per weight        on a row that is not a multiple of 256
    gguf_q4_0    Q4_0     32     4.5
    gguf_q4_1    Q4_1     32     5.0
    gguf_q5_0    Q5_0     32     5.5
    gguf_q5_1    Q5_1     32     6.0
    gguf_q8_0    Q8_0     32     8.5
    gguf_iq4_nl  IQ4_NL   32     4.5 (a 16-value codebook)
    gguf_q2_k    Q2_K     256    2.625                  Q4_0 (llama.cpp's own fallback, as llama-quantize applies it)
    gguf_q3_k    Q3_K     256    3.4375                 Q4_0
    gguf_q4_k    Q4_K     256    4.5                    Q5_0
    gguf_q5_k    Q5_K     256    5.5                    Q5_1
    gguf_q6_k    Q6_K     256    6.5625                 Q8_0
    gguf_iq4_xs  IQ4_XS   256    4.25                   IQ4_NL

These weights exist only where llama.cpp made them: an arena whose level ladder holds them reads them from its level
database (`agentqat.levels`), which asks the engine (`agentqat.engines.levels`) for one `--pure` file per type;
quantizing them anywhere else is an error the match records. A 256-block type on a module whose input width is not a
multiple of 256 (SmolLM2's 576, Gemma 3's 640: everything but ffn_down) is what llama-quantize stores there: its
fallback type, at the fallback's bytes, exactly as a GGUF file of the mix holds it.
"""

from __future__ import annotations

import torch

from agentqat.quant.base import LayerStats, WeightQuant, WeightQuantizer
from agentqat.quant.ggml import GGML_BLOCK, GGML_TYPES, GgmlType
from agentqat.quant.registry import Method, register
from agentqat.quant.storage import Shape, Storage

ENGINE_ROUNDING = "imatrix"
IQ4_NL = GgmlType("gguf_iq4_nl", "IQ4_NL", 4, False)
SUPER_BLOCK_TYPES = (
    GgmlType("gguf_q2_k", "Q2_K", 2, True), GgmlType("gguf_q3_k", "Q3_K", 3, False), GgmlType("gguf_q4_k", "Q4_K", 4, True),
    GgmlType("gguf_q5_k", "Q5_K", 5, True), GgmlType("gguf_q6_k", "Q6_K", 6, False), GgmlType("gguf_iq4_xs", "IQ4_XS", 4, False),
)  # fmt: skip
ENGINE_TYPES = (*GGML_TYPES, IQ4_NL, *SUPER_BLOCK_TYPES)
ENGINE_TYPE_OF_FORMAT = {t.format: t for t in ENGINE_TYPES}
# llama.cpp's tensor_type_fallback (src/llama-quant.cpp): a 256-block type on a row it does not divide.
FALLBACK = {"Q2_K": "Q4_0", "Q3_K": "Q4_0", "Q4_K": "Q5_0", "Q5_K": "Q5_1", "Q6_K": "Q8_0", "IQ4_XS": "IQ4_NL"}


def block_and_bytes(type_name: str) -> tuple[int, int]:
    """Returns (weights per block, bytes per block) of a GGML type (the gguf package's table)."""
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    return GGML_QUANT_SIZES[GGMLQuantizationType[type_name]]


def stored_type(type_name: str, in_features: int) -> str:
    """Returns the type llama-quantize stores a row of `in_features` weights in when asked for `type_name`."""
    block, _ = block_and_bytes(type_name)
    return FALLBACK[type_name] if in_features % block else type_name


def exact_storage(ggml_type: GgmlType):
    def storage(config: WeightQuant, shape: Shape) -> Storage:
        """Returns the bits of the stored type's blocks beside `bits` per weight (scales, minimums, super-blocks)."""
        block, size = block_and_bytes(stored_type(ggml_type.type_name, shape.in_features))
        weights = shape.in_features * shape.out_features
        return Storage(8 * size * weights // block - config.bits * weights, 0)

    return storage


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
        quantize=_made_by_engine(ggml_type), storage=exact_storage(ggml_type),
        label=f"GGUF's {ggml_type.type_name}", deploy_targets=frozenset({"fake-quant", "gguf"}), bits=(ggml_type.bits,),
        group_sizes=(GGML_BLOCK,), scales=("fp16",), clips=(1.0,), scaling="min/max" if ggml_type.has_min else "absmax",
        searched=False,
    )  # fmt: skip


def is_engine_made(config: WeightQuant) -> bool:
    """Returns whether llama-quantize makes this config's weights (rounding imatrix on a GGUF format)."""
    return config.rounding == ENGINE_ROUNDING and config.format in ENGINE_TYPE_OF_FORMAT


for _type in ENGINE_TYPES:
    register(engine_method(_type))
