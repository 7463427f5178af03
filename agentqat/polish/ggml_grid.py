"""A linear layer trained inside a GGML type's own grid: the 32-wide blocks of `agentqat.engines.ggml_blocks`
(Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 with their fp16 scales and minimums, IQ4_NL's 16-value codebook).

It starts from the blocks llama-quantize made (with the arena's importance matrix): latent weights at their values,
log2 |d| per block (the sign of d stays: ggml's tables are not symmetric), the minimum m per block for the `_1`
types. Each forward pass snaps (w - m) / d to the nearest value of the type's table, straight through (STE), as
`QatLinear` rounds onto its int grid. `frozen()` stores d and m as fp16 and the nearest indices: the weight is then
exactly what the type's blocks hold, and `blocks` are those blocks, written into the GGUF byte for byte. A block
whose d is 0 (all its weights 0) stays as it is.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from agentqat.engines.ggml_blocks import BLOCK, LAYOUTS, GgmlBlocks, decode
from agentqat.engines.gguf_tensors import module_raw, module_values
from agentqat.engines.levels import EngineFiles
from agentqat.polish.ste import PolishedWeight
from agentqat.quant.ggml_engine import ENGINE_TYPE_OF_FORMAT, is_engine_made
from agentqat.strategy.resolve import ResolvedStrategy

GGML_SUFFIX = ".ggml"  # a polish's weights.safetensors: a module's blocks in its GGML type (uint8, model row order)
GGML_TYPES_KEY = "ggml_types"  # ... and the file's metadata naming each one's type (JSON: module -> type)


@dataclass(frozen=True)
class EngineLevels:
    """A strategy's modules at levels llama.cpp made (they cannot be quantized here): each one's weight as its level
    file holds it, the blocks of those a polish trains inside their GGML type (the 32-wide types), and the token
    embedding (and untied head) at the [engine]'s type, which the quantized blocks' inputs come from."""

    weights: Mapping[str, torch.Tensor]
    blocks: Mapping[str, GgmlBlocks]
    embedding: Mapping[str, torch.Tensor]


NO_ENGINE = EngineLevels({}, {}, {})


def engine_levels(files: EngineFiles, resolved: ResolvedStrategy, embedding: Mapping[str, torch.Tensor]) -> EngineLevels:
    """Returns the strategy's engine-made modules as their level files hold them: every one's weight, and the blocks
    of those stored in a 32-wide type (a 256-block type on a row it does not divide is stored in its fallback); with
    the arena's `embedding`."""
    from gguf import GGUFReader

    by_type: dict[str, list[str]] = {}
    for name, config in resolved.modules.items():
        if is_engine_made(config.weight):
            by_type.setdefault(ENGINE_TYPE_OF_FORMAT[config.weight.format].type_name, []).append(name)
    weights, blocks = {}, {}
    for type_name, names in by_type.items():
        reader = GGUFReader(str(files.levels[type_name]))
        tensors = {tensor.name: tensor for tensor in reader.tensors}
        for name, (tensor_name, stored_type, rows) in module_raw(reader, names).items():
            columns = int(tensors[tensor_name].shape[0])
            if stored_type in LAYOUTS:
                blocks[name] = decode(rows, stored_type, columns)
                weights[name] = blocks[name].values()
            else:
                weights[name] = module_values(reader, [name])[name]
    return EngineLevels(weights, blocks, embedding)


def snap_ste(values: torch.Tensor, table: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns (values snapped to the nearest entry of the ascending `table`, with the identity's gradient; the
    entries' positions in `table`)."""
    midpoints = (table[1:] + table[:-1]) / 2
    position = torch.bucketize(values.detach(), midpoints)
    return values + (table[position] - values).detach(), position


class GgmlQatLinear(nn.Module):
    """A linear layer computing with its latent weight snapped to its GGML type's blocks (see the module docstring).
    `name` is the module's name in the model; `learn_scale` false keeps d fixed."""

    pow2 = False  # the optimizer's scale groups: d is learned as a log2 like QatLinear's fp16 scales

    def __init__(self, name: str, start: GgmlBlocks, bias: torch.Tensor | None, learn_scale: bool = True):
        super().__init__()
        self.name, self.type_name, self.shape = name, start.type_name, start.shape
        layout = LAYOUTS[start.type_name]
        order = sorted(range(len(layout.table)), key=lambda index: layout.table[index])
        self.register_buffer("table", torch.tensor([layout.table[i] for i in order], dtype=torch.float32))
        self.register_buffer("index_of", torch.tensor(order))  # position in the ascending table -> stored index
        self.register_buffer("bias", None if bias is None else bias.detach().to(torch.float32).clone())
        self.register_buffer("sign", torch.sign(start.d)[:, None])
        self.register_buffer("start_index", start.index.clone())
        self.weight = nn.Parameter(start.values().clone())
        live = start.d != 0
        self.scale = nn.Parameter(torch.log2(torch.where(live, start.d.abs(), 1.0))[:, None], requires_grad=learn_scale)
        minimum = start.m if start.m is not None else torch.zeros_like(start.d)
        self.zero = nn.Parameter(minimum[:, None].clone(), requires_grad=start.m is not None)  # the minimum m

    def _d(self) -> torch.Tensor:
        return self.sign * torch.exp2(self.scale)

    def quantized_weight(self) -> torch.Tensor:
        """Returns the latent weight snapped to the type's grid, differentiable through the STE."""
        blocks = self.weight.reshape(-1, BLOCK)
        d = torch.where(self.sign == 0, 1.0, self._d())
        snapped, _ = snap_ste((blocks - self.zero) / d, self.table)
        values = torch.where(self.sign == 0, blocks.detach(), d * snapped + self.zero)
        return values.reshape(self.shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.quantized_weight().to(x.dtype), None if self.bias is None else self.bias.to(x.dtype))

    @torch.no_grad()
    def frozen(self) -> PolishedWeight:
        """Returns the final weight and its blocks: fp16 d and m, the nearest table entries."""
        d = self._d().to(torch.float16).to(torch.float32).reshape(-1)
        m = self.zero.to(torch.float16).to(torch.float32).reshape(-1) if self.zero.requires_grad else None
        live = d != 0
        blocks = self.weight.reshape(-1, BLOCK)
        scaled = (blocks - (m[:, None] if m is not None else 0.0)) / torch.where(live, d, 1.0)[:, None]
        _, position = snap_ste(scaled, self.table)
        index = torch.where(live[:, None], self.index_of[position], self.start_index)
        polished = GgmlBlocks(self.type_name, self.shape, d, m, index)
        return PolishedWeight(polished.values(), None, BLOCK, polished)
