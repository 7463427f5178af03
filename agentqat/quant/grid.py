"""The integer grid shared by RTN, GPTQ, AWQ and HQQ: groups, scales, zero points, clip search.

Conventions (dequantized value = scale * (clamp(round(w / scale + zero), qmin, qmax) - zero)):
- symmetric: codes in [-(2^(b-1) - 1), 2^(b-1) - 1], zero 0, scale = r * max|w| / (2^(b-1) - 1). The range is
  exactly symmetric and 0 is exact; code -2^(b-1) stays unused (the absmax convention of LLM.int8 and AWQ).
- asymmetric: codes in [0, 2^b - 1], range [r * min(w, 0), r * max(w, 0)], scale = range / (2^b - 1),
  integer zero = round(-min / scale). The range includes 0 so the zero point is a code (as GPTQ and
  compressed-tensors do); a constant group is then reproduced exactly.
- r is the clip ratio; clip "mse" tries MSE_RATIOS per group and keeps the one with least squared error.
- scale "fp16": scales rounded up to the next float16 (storing them costs 16 bits); "pow2": rounded up to the
  next power of two (a multiply becomes a shift). Rounding up means no value clips more than with the exact
  min/max scale: the error of an unclipped value stays within half a step.
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Sequence

import torch

from agentqat.quant.base import INT_GRID, Clip, IntCoder, IntCodes, ScaleType, WeightQuant, WeightQuantizer
from agentqat.quant.registry import Method
from agentqat.quant.storage import StorageRule, integer_zeros

MSE_RATIOS: tuple[float, ...] = tuple(1.0 - 0.025 * step for step in range(21))  # 1.0 down to 0.5
MIN_SCALE = 2.0**-24  # smallest positive float16: all-zero groups get this scale instead of 0
MAX_SCALE = 65504.0  # largest float16


class Grid(NamedTuple):
    """Per-group scale and zero point (each [groups, 1]) and the code range [qmin, qmax]."""

    scale: torch.Tensor
    zero: torch.Tensor
    qmin: int
    qmax: int


def to_groups(weight: torch.Tensor, group_size: int) -> torch.Tensor:
    """Returns `weight` [out, in] viewed as [out * in / g, g] rows of one group each (g = in for group_size 0)."""
    in_features = weight.shape[1]
    size = group_size or in_features
    if size < 0 or in_features % size:
        raise ValueError(f"group_size {group_size} does not divide in_features {in_features}")
    return weight.reshape(-1, size)


def code_range(bits: int, symmetric: bool) -> tuple[int, int]:
    """Returns (qmin, qmax), the integer codes of a `bits`-bit grid."""
    if not 2 <= bits <= 8:
        raise ValueError(f"integer grids take 2 to 8 bits, got {bits}")
    if symmetric:
        return -(2 ** (bits - 1) - 1), 2 ** (bits - 1) - 1
    return 0, 2**bits - 1


def clip_ratios(clip: Clip) -> tuple[float, ...]:
    """Returns the range shrink ratios to try: the one asked for, or MSE_RATIOS for "mse"."""
    if clip == "mse":
        return MSE_RATIOS
    if not 0.0 < clip <= 1.0:
        raise ValueError(f"clip ratio must be in (0, 1], got {clip}")
    return (float(clip),)


def store_scale(scale: torch.Tensor, kind: ScaleType) -> torch.Tensor:
    """Returns `scale` rounded up to the next float16 ("fp16") or the next power of two ("pow2")."""
    scale = scale.clamp(MIN_SCALE, MAX_SCALE)
    if kind == "pow2":
        return torch.exp2(torch.ceil(torch.log2(scale)))
    half = scale.to(torch.float16)
    half = torch.where(half.to(torch.float32) < scale, torch.nextafter(half, torch.full_like(half, MAX_SCALE)), half)
    return half.to(torch.float32)


def round_to_codes(
    values: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, qmin: int, qmax: int
) -> torch.Tensor:
    """Returns the codes of `values` on the grid: round(values / scale + zero) clamped to [qmin, qmax], as float32.

    Adding +0.0 turns the -0.0 that rounding gives values in [-0.5, 0) into +0.0: a code is then a plain whole
    number, the dequantized weight never holds -0.0, and codes stored as integers read back bit for bit.
    """
    return torch.clamp(torch.round(values / scale + zero), qmin, qmax) + 0.0


def fake_quantize(
    values: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, qmin: int, qmax: int
) -> torch.Tensor:
    """Returns `values` rounded to the grid scale * (code - zero), codes clamped to [qmin, qmax]."""
    return scale * (round_to_codes(values, scale, zero, qmin, qmax) - zero)


def dequantize(quantized: IntCodes) -> torch.Tensor:
    """Returns the float32 weight of `quantized`: (scale * (codes - zero)) / divisor, group by group. The quantizers
    on the integer grid return this, so it is bit for bit what they compute."""
    groups = quantized.codes.reshape(quantized.scale.shape[0], -1)
    weight = (quantized.scale * (groups - quantized.zero)).reshape(quantized.codes.shape)
    return weight if quantized.divisor is None else weight / quantized.divisor


def fake_quantize_groups(groups: torch.Tensor, grid: Grid) -> torch.Tensor:
    """Returns `groups` [n, g] rounded to their grid."""
    return fake_quantize(groups, grid.scale, grid.zero, grid.qmin, grid.qmax)


def pick_best(
    groups: torch.Tensor,
    candidates: Sequence[tuple[torch.Tensor, ...]],
    dequantize: Callable[..., torch.Tensor],
) -> tuple[torch.Tensor, ...]:
    """Returns, per group (row), the candidate parameters whose `dequantize(groups, *params)` has least squared error.

    Each candidate is a tuple of [groups, 1] tensors; ties keep the earlier candidate.
    """
    best = candidates[0]
    if len(candidates) == 1:
        return best
    best_error = (dequantize(groups, *best) - groups).square().sum(1, keepdim=True)
    for params in candidates[1:]:
        error = (dequantize(groups, *params) - groups).square().sum(1, keepdim=True)
        better = error < best_error
        best = tuple(torch.where(better, new, old) for new, old in zip(params, best))
        best_error = torch.minimum(error, best_error)
    return best


def _scale_and_zero(
    groups: torch.Tensor, ratio: float, config: WeightQuant, qmin: int, qmax: int
) -> tuple[torch.Tensor, torch.Tensor]:
    if config.symmetric:
        absmax = groups.abs().amax(1, keepdim=True) * ratio
        return store_scale(absmax / qmax, config.scale), torch.zeros_like(absmax)
    low = groups.amin(1, keepdim=True).clamp_max(0.0) * ratio
    high = groups.amax(1, keepdim=True).clamp_min(0.0) * ratio
    scale = store_scale((high - low) / (qmax - qmin), config.scale)
    return scale, torch.clamp(torch.round(-low / scale), qmin, qmax)


def int_grid(groups: torch.Tensor, config: WeightQuant) -> Grid:
    """Returns the grid of each group (row of `groups`) for the config's bits, symmetry, clip and scale type."""
    qmin, qmax = code_range(config.bits, config.symmetric)
    candidates = [_scale_and_zero(groups, ratio, config, qmin, qmax) for ratio in clip_ratios(config.clip)]
    scale, zero = pick_best(groups, candidates, lambda values, s, z: fake_quantize(values, s, z, qmin, qmax))
    return Grid(scale, zero, qmin, qmax)


INT_GRID_BASELINE = {"weight": {"group_size": 64, "symmetric": False}}  # the baseline matrix's int entries


def int_grid_method(
    rounding: str,
    quantize: WeightQuantizer,
    deploy_targets: frozenset[str],
    storage: StorageRule = integer_zeros,
    needs_calibration: bool = False,
    codes: IntCoder | None = None,
    settings: object | None = None,
) -> Method:
    """Returns the Method of a rounding on the integer grid (format int; any width 2-8, group, scale and clip);
    `codes`, when given, returns what `quantize` does before dequantization (the level database packs it)."""
    return Method(
        name=rounding, format=INT_GRID, rounding=rounding, quantize=quantize, storage=storage, label="integer grids",
        deploy_targets=deploy_targets, needs_calibration=needs_calibration, baseline=INT_GRID_BASELINE, codes=codes,
        settings=settings,
    )  # fmt: skip
