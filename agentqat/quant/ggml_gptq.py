"""GPTQ inside GGML's 32-wide types: rounding "gptq" on gguf_q4_0, gguf_q5_0, gguf_q8_0 and gguf_iq4_nl. The result
is the type's own blocks (an fp16 scale d per 32 weights and indices into the type's table, the full table: Q4_0's
-8..7), so a GGUF file stores exactly what the arena scored (`agentqat.engines.ggml_blocks` writes them).

1. Each block's d is found as llama.cpp finds IQ4_NL's (`quantize_row_iq4_nl_impl` with an importance matrix, 7
   tries a side): every candidate maps the block's largest weight near an end of the table, each is refitted by
   weighted least squares, and the best weighted fit wins. The importance of input j is the calibration Hessian's
   diagonal (the mean of x_j^2: what llama-imatrix collects), times sqrt(sigma^2 + w^2) as llama.cpp weighs it.
   llama.cpp uses this search for IQ4_NL only (Q4_0 and Q5_0 search otherwise, Q8_0 takes absmax / 127); here every
   table gets it, and d is then rounded to fp16 as the file stores it.
2. With the scales fixed, GPTQ (Frantar et al. 2022) picks the indices column by column (act-order by default, the
   GPTQ method's damping and lazy blocks), each the table entry nearest to the updated weight / d, and spreads
   the rounding error over the columns not yet quantized through the inverse Hessian's Cholesky factor.

Levels of these methods are stored as blocks in the level database, and a GGUF export writes those blocks.
"""

from __future__ import annotations

import torch

from agentqat.engines.ggml_blocks import BLOCK, LAYOUTS, GgmlBlocks
from agentqat.quant.base import LayerStats, WeightQuant
from agentqat.quant.ggml import GGML_TYPES, GgmlType
from agentqat.quant.ggml_engine import IQ4_NL, exact_storage
from agentqat.quant.gptq import GptqSettings, inverse_hessian_factor
from agentqat.quant.registry import Method, register

GPTQ_ROUNDING = "gptq"
SCALE_TRIES = 7  # llama.cpp's ntry for IQ4_NL
TINY_BLOCK = 1e-15  # llama.cpp's GROUP_MAX_EPS: a block this small keeps d = 0
SCALE_ROWS = 2048  # rows searched at once (about 0.5 GB at 640 columns)
GPTQ_TYPES = tuple(t for t in (*GGML_TYPES, IQ4_NL) if t.type_name in LAYOUTS and not t.has_min)


class TypeTable:
    """A type's value table sorted, with each sorted entry's index in the type's own table and the midpoints."""

    def __init__(self, type_name: str):
        table = torch.tensor(LAYOUTS[type_name].table, dtype=torch.float32)
        self.values, self.index = torch.sort(table)
        self.mids = (self.values[1:] + self.values[:-1]) / 2

    def nearest(self, x: torch.Tensor) -> torch.Tensor:
        """Returns the position in the sorted table of the entry nearest to each of `x`."""
        return torch.bucketize(x, self.mids)


def block_scales(weight: torch.Tensor, type_name: str, importance: torch.Tensor, tries: int = SCALE_TRIES) -> torch.Tensor:
    """Returns each 32-weight block's scale d, [rows, columns / 32] float32 holding fp16 values, found by llama.cpp's
    IQ4_NL search over the type's table (step 1 of the module docstring); `importance` [columns] weighs the inputs.
    Rows are searched in chunks, so that a 262k-row embedding needs no more memory than a linear layer."""
    table = TypeTable(type_name)
    return torch.cat([_chunk_scales(chunk, table, importance, tries) for chunk in weight.split(SCALE_ROWS)])


def _chunk_scales(weight: torch.Tensor, table: TypeTable, importance: torch.Tensor, tries: int) -> torch.Tensor:
    rows, columns = weight.shape
    x = weight.reshape(rows, columns // BLOCK, BLOCK)
    sigma2 = 2.0 * (x * x).mean(-1, keepdim=True)
    weights = importance.reshape(1, -1, BLOCK) * torch.sqrt(sigma2 + x * x)
    largest = x.gather(-1, x.abs().argmax(-1, keepdim=True))  # the signed weight of largest magnitude
    lowest = table.values[0]
    inverse = torch.cat([lowest / -largest] + [(step + lowest) / largest for step in range(-tries, tries + 1)], dim=-1)
    inverse = torch.where(largest.abs() < TINY_BLOCK, 0.0, inverse)  # [rows, blocks, candidates]
    q = table.values[table.nearest(x[..., None, :] * inverse[..., None])]  # [rows, blocks, candidates, 32]
    w, xx = weights[..., None, :], x[..., None, :]
    sum_qx, sum_q2 = (w * q * xx).sum(-1), (w * q * q).sum(-1)
    fit = torch.where(sum_q2 > 0, sum_qx * sum_qx / sum_q2.clamp_min(1e-30), -1.0)
    best = fit.argmax(-1, keepdim=True)
    d = (sum_qx.gather(-1, best) / sum_q2.gather(-1, best).clamp_min(1e-30))[..., 0]
    d = torch.where(largest[..., 0].abs() < TINY_BLOCK, 0.0, d)
    return d.to(torch.float16).to(torch.float32)


def gptq_blocks(
    weight: torch.Tensor, type_name: str, hessian: torch.Tensor, settings: GptqSettings = GptqSettings(),
) -> GgmlBlocks:  # fmt: skip
    """Returns `weight` [out, in] in `type_name`'s blocks: llama.cpp's scales, then GPTQ's indices against `hessian`
    (X^T X / tokens of the layer's input), as the module docstring says."""
    rows, columns = weight.shape
    if columns % BLOCK:
        raise ValueError(f"{type_name} blocks are {BLOCK} wide; in_features {columns} is not a multiple")
    if hessian.shape != (columns, columns):
        raise ValueError(f"hessian shape {tuple(hessian.shape)} does not match in_features {columns}")
    table = TypeTable(type_name)
    w = weight.detach().to("cpu", torch.float32).clone()
    h = hessian.to("cpu", torch.float32).clone()
    dead = h.diagonal() == 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    d = block_scales(w, type_name, h.diagonal())
    order = torch.argsort(h.diagonal(), descending=True, stable=True) if settings.act_order else torch.arange(columns)
    scale = d[:, order // BLOCK]  # [rows, columns] in processing order
    inverse_scale = torch.where(scale == 0, 0.0, 1.0 / torch.where(scale == 0, 1.0, scale))
    w = w[:, order]
    factor = inverse_hessian_factor(h[order][:, order], settings.damp)
    sorted_index = torch.empty(rows, columns, dtype=torch.int64)
    for start in range(0, columns, settings.block_size):
        end = min(start + settings.block_size, columns)
        block = w[:, start:end].clone()
        errors = torch.empty_like(block)
        block_factor = factor[start:end, start:end]
        for i in range(end - start):
            column = start + i
            position = table.nearest(block[:, i] * inverse_scale[:, column])
            sorted_index[:, column] = position
            error = (block[:, i] - scale[:, column] * table.values[position]) / block_factor[i, i]
            block[:, i:].sub_(torch.outer(error, block_factor[i, i:]))
            errors[:, i] = error
        w[:, end:].sub_(errors @ factor[start:end, end:])
    index = table.index[sorted_index[:, torch.argsort(order)]]
    return GgmlBlocks(type_name, (rows, columns), d.reshape(-1), None, index.reshape(-1, BLOCK))


def _method(ggml_type: GgmlType) -> Method:
    type_name, format_name, bits = ggml_type.type_name, ggml_type.format, ggml_type.bits

    def blocks(weight: torch.Tensor, config: WeightQuant, stats: LayerStats | None, settings: GptqSettings) -> GgmlBlocks:
        """Returns the weight's blocks by GPTQ inside the type (it reads the layer's Hessian)."""
        if stats is None or stats.hessian is None:
            raise ValueError(f"{format_name} with rounding gptq needs the layer's calibration Hessian")
        return gptq_blocks(weight, type_name, stats.hessian, settings)

    def quantize(weight: torch.Tensor, config: WeightQuant, stats: LayerStats | None, settings: GptqSettings) -> torch.Tensor:
        """Returns the weight as the type's blocks found by GPTQ hold it (float32, as ggml computes it)."""
        return blocks(weight, config, stats, settings).values().to(weight.device)

    return Method(
        name=f"{format_name}-{GPTQ_ROUNDING}", format=format_name, rounding=GPTQ_ROUNDING, quantize=quantize,
        storage=exact_storage(ggml_type), label=f"GGUF's {type_name}", deploy_targets=frozenset({"fake-quant", "gguf"}),
        needs_calibration=True, bits=(bits,), group_sizes=(BLOCK,), scales=("fp16",), clips=(1.0,), scaling="absmax",
        searched=False, blocks=blocks, settings=GptqSettings(),
    )  # fmt: skip


for _type in GPTQ_TYPES:
    register(_method(_type))
