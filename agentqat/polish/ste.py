"""A linear layer on a learnable integer grid (EfficientQAT's Block-AP quantizer): latent weights, per-group scales
(or power-of-two exponents) and zero points all take gradients, rounding passes them straight through (STE).

The grid is the one `agentqat.quant.grid` describes: dequantized = scale * (clamp(round(w / scale + zero), qmin,
qmax) - zero). Scales are learned as base-2 logarithms e (a learning rate is then a relative step, the same for
every model): scale = 2^e, or with `scale: pow2` scale = 2^round(e), rounded by the STE too (Block-AP learns fp16
scales directly; learnable exponents are AdaptiveQAT's).
`frozen()` returns the final weight, every value on the grid of the stored scales and integer zero points.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from agentqat.engines.ggml_blocks import GgmlBlocks
from agentqat.quant.base import WeightQuant
from agentqat.quant.grid import MAX_SCALE, MIN_SCALE, Grid, code_range, int_grid, to_groups

POW2_START = 0.25


def round_ste(values: torch.Tensor) -> torch.Tensor:
    """Returns `values` rounded, with the gradient of the identity (straight-through estimator)."""
    return values + (torch.round(values) - values).detach()


@dataclass(frozen=True)
class PolishedWeight:
    """A trained module's weight: the dequantized values, and either the int grid they lie on with its group size,
    or (trained inside a GGML type, `agentqat.polish.ggml_grid`) that type's blocks, which hold them exactly."""

    weight: torch.Tensor
    grid: Grid | None
    group_size: int
    blocks: GgmlBlocks | None = None


def on_grid(polished: PolishedWeight) -> bool:
    """Returns whether every value of the weight is scale * (code - zero) with an integer code in range."""
    groups = to_groups(polished.weight, polished.group_size)
    scale, zero, qmin, qmax = polished.grid
    codes = groups / scale + zero
    integral = torch.allclose(codes, codes.round(), atol=1e-3)
    return integral and bool((codes.round() >= qmin).all() and (codes.round() <= qmax).all())


class QatLinear(nn.Module):
    """A linear layer computing with its latent weight fake-quantized on a learnable grid (see the module
    docstring). `name` is the module's name in the model; `learn_scale` false keeps scales (or exponents) fixed."""

    def __init__(self, name: str, latent: torch.Tensor, bias: torch.Tensor | None, config: WeightQuant, grid: Grid, learn_scale: bool = True):
        super().__init__()
        self.name, self.config = name, config
        self.shape = tuple(latent.shape)
        self.group_size = to_groups(latent, config.group_size).shape[1]
        self.qmin, self.qmax = grid.qmin, grid.qmax
        self.weight = nn.Parameter(latent.detach().to(torch.float32).clone())
        self.register_buffer("bias", None if bias is None else bias.detach().to(torch.float32).clone())
        scale = grid.scale.detach().to(torch.float32)
        self.pow2 = config.scale == "pow2"
        # log2 of the scale; pow2: a quarter step below the stored exponent (the same power of two once rounded, and
        # the rounded-up scale is the likelier one to shrink)
        self.scale = nn.Parameter(torch.log2(scale) - POW2_START * self.pow2, requires_grad=learn_scale)
        self.zero = nn.Parameter(grid.zero.detach().to(torch.float32).clone(), requires_grad=not config.symmetric)

    @classmethod
    def from_weights(cls, name: str, base: torch.Tensor, quantized: torch.Tensor, bias: torch.Tensor | None, config: WeightQuant, learn_scale: bool = True) -> QatLinear:
        """Returns the layer starting where a quantizer left it: latent weight `quantized` (the strategy's own
        result), on the grid `int_grid` gives the base weight (the grid GPTQ and RTN round onto)."""
        grid = int_grid(to_groups(base.detach().to(torch.float32), config.group_size), config)
        return cls(name, quantized, bias, config, grid, learn_scale)

    def grid_scale(self) -> torch.Tensor:
        """Returns the per-group scales the forward pass uses ([groups, 1])."""
        exponent = round_ste(self.scale) if self.pow2 else self.scale
        return torch.exp2(exponent).clamp(MIN_SCALE, MAX_SCALE)

    def quantized_weight(self) -> torch.Tensor:
        """Returns the latent weight fake-quantized on the current grid, differentiable through the STE."""
        groups = self.weight.reshape(-1, self.group_size)
        scale = self.grid_scale()
        zero = torch.clamp(round_ste(self.zero), self.qmin, self.qmax)
        codes = torch.clamp(round_ste(groups / scale + zero), self.qmin, self.qmax)
        return (scale * (codes - zero)).reshape(self.shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.quantized_weight().to(x.dtype), None if self.bias is None else self.bias.to(x.dtype))

    @torch.no_grad()
    def retarget(self, bits: int) -> None:
        """Moves the layer to a `bits`-bit grid covering the same range (the curriculum's next step)."""
        qmin, qmax = code_range(bits, self.config.symmetric)
        ratio = (self.qmax - self.qmin) / (qmax - qmin)
        self.scale.add_(math.log2(ratio))
        self.zero.copy_(torch.clamp(torch.round((self.zero - self.qmin) / ratio) + qmin, qmin, qmax))
        self.qmin, self.qmax = qmin, qmax

    @torch.no_grad()
    def frozen(self) -> PolishedWeight:
        """Returns the final weight on the grid of the stored scales (the nearest float16: a learned scale has no
        range to keep unclipped; or powers of two) and integer zero points."""
        scale = self.grid_scale().to(torch.float16).to(torch.float32).clamp(MIN_SCALE, MAX_SCALE)
        zero = torch.clamp(torch.round(self.zero), self.qmin, self.qmax)
        groups = self.weight.reshape(-1, self.group_size)
        codes = torch.clamp(torch.round(groups / scale + zero), self.qmin, self.qmax)
        weight = (scale * (codes - zero)).reshape(self.shape)
        return PolishedWeight(weight, Grid(scale, zero, self.qmin, self.qmax), self.group_size)
