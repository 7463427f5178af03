"""Applies a resolved strategy to a model by swapping modules, and restores the base model cheaply.

The caller's base nn.Linear modules are never modified: each quantized module is a new QuantizedLinear
holding its own fake-quantized weight, and `restore` puts the original module objects back. Quantized
modules are memoised in a LayerCache keyed by (module, resolved config, compute dtype, calibration), so a
config seen before costs a dictionary look-up. Given a level database (agentqat.levels), a module whose config is
one of its levels takes its stored weight instead of being quantized: the same values, read from disk. Given
`overrides` (module name -> weight, e.g. polished by agentqat.polish), those modules take that weight as it is.
`embedding_applied` puts other values into the token embedding (an [engine] arena's type) for a while.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from agentqat.models import quantizable_linears
from agentqat.quant import fake_quantize_activation, quantize_with_outliers
from agentqat.quant.base import ActivationQuant, LayerStats
from agentqat.quant.registry import changed_settings
from agentqat.quant.schemes import keeps_outliers, transforms_of
from agentqat.strategy.calibration import Calibration
from agentqat.strategy.resolve import ModuleConfig, ResolvedStrategy


class StoredLevels(Protocol):
    """Weights stored at levels (agentqat.levels.LevelDatabase is one): a module's weight at a config, or None."""

    def weight(self, name: str, config: ModuleConfig, calibration_key: str | None) -> torch.Tensor | None: ...

COMPUTE_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class QuantizedLinear(nn.Module):
    """A linear layer that computes with a fake-quantized weight in the strategy's compute dtype.

    Inputs are divided by the SmoothQuant scales (when smoothing) and fake-quantized (when activation bits
    are below 16) before the product; the output is cast back to the input's dtype, so a compute dtype of
    fp16 simulates fp16 arithmetic in the linear layers (where overflow happens) and nowhere else.
    """

    def __init__(
        self,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        activation: ActivationQuant,
        input_divisor: torch.Tensor | None,
        compute_dtype: torch.dtype,
        outlier_count: int,
    ):
        super().__init__()
        self.register_buffer("weight", weight.to(compute_dtype))
        self.register_buffer("bias", None if bias is None else bias.detach().to(compute_dtype))
        self.register_buffer("input_divisor", input_divisor)
        self.activation = activation
        self.compute_dtype = compute_dtype
        self.outlier_count = outlier_count
        self.out_features, self.in_features = weight.shape

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out_dtype = x.dtype
        if self.input_divisor is not None:
            x = x / self.input_divisor
        x = fake_quantize_activation(x, self.activation)
        return F.linear(x.to(self.compute_dtype), self.weight, self.bias).to(out_dtype)

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, compute={self.compute_dtype}"


def _smoothed_stats(stats: LayerStats, scales: torch.Tensor) -> LayerStats:
    """Returns the statistics of X / s, the input a smoothed module actually sees."""
    inverse = 1.0 / scales
    return LayerStats(
        hessian=stats.hessian * inverse[:, None] * inverse[None, :],
        abs_mean=stats.abs_mean * inverse,
        abs_max=stats.abs_max * inverse,
        tokens=stats.tokens,
    )


def quantize_module(
    linear: nn.Linear, config: ModuleConfig, stats: LayerStats | None, compute_dtype: torch.dtype
) -> QuantizedLinear:
    """Returns a QuantizedLinear computing what `linear` computes under `config` (linear is not modified)."""
    weight = linear.weight.detach().to(torch.float32)
    input_divisor = None
    for transform in transforms_of(config.activation) if stats is not None else ():
        divisor = transform.divisor(stats.abs_max, weight, getattr(config.activation, transform.field))
        input_divisor = divisor if input_divisor is None else input_divisor * divisor
        weight = weight * divisor[None, :]
        stats = _smoothed_stats(stats, divisor)
    quantized, mask = quantize_with_outliers(weight, config.weight, config.outliers, stats)
    return QuantizedLinear(quantized, linear.bias, config.activation, input_divisor, compute_dtype, int(mask.sum()))


def _module_maker(
    name: str, linear: nn.Linear, config: ModuleConfig, calibration: Calibration | None, compute_dtype: torch.dtype,
    levels: StoredLevels | None,
):  # fmt: skip
    """Returns a function making the module's QuantizedLinear: from the level database where `config` is one of its
    levels (a level has no smoothing and no outliers), by quantizing otherwise."""

    def make() -> QuantizedLinear:
        stored = levels.weight(name, config, calibration.key if calibration else None) if levels else None
        if stored is not None:
            return QuantizedLinear(stored, linear.bias, config.activation, None, compute_dtype, 0)
        return quantize_module(linear, config, calibration.stats.get(name) if calibration else None, compute_dtype)

    return make


class LayerCache:
    """Least-recently-used store of quantized modules, bounded in bytes, counting hits and misses."""

    def __init__(self, max_bytes: int = 2 * 2**30):
        self.max_bytes = max_bytes
        self.entries: OrderedDict[tuple, QuantizedLinear] = OrderedDict()
        self.bytes = 0
        self.hits = 0
        self.misses = 0

    def get_or_make(self, key: tuple, make) -> QuantizedLinear:
        """Returns the cached module for `key`, making (and caching) it with `make()` on a miss."""
        if key in self.entries:
            self.hits += 1
            self.entries.move_to_end(key)
            return self.entries[key]
        self.misses += 1
        module = make()
        size = sum(buffer.numel() * buffer.element_size() for buffer in module.buffers())
        self.entries[key] = module
        self.bytes += size
        while self.bytes > self.max_bytes and len(self.entries) > 1:
            _, evicted = self.entries.popitem(last=False)
            self.bytes -= sum(b.numel() * b.element_size() for b in evicted.buffers())
        return module

    def clear(self) -> None:
        """Drops every cached module (the hit and miss counts stay)."""
        self.entries.clear()
        self.bytes = 0

    @property
    def hit_rate(self) -> float:
        total = self.hits + self.misses
        return self.hits / total if total else 0.0


def _is_identity(config: ModuleConfig, compute_dtype: torch.dtype) -> bool:
    return (
        config.weight.bits == 16
        and config.activation.bits == 16
        and not transforms_of(config.activation)
        and not keeps_outliers(config.outliers)
        and compute_dtype == torch.float32
    )


@dataclass
class AppliedStrategy:
    """What `apply_strategy` swapped in: the original modules (for restore) and per-module outlier counts."""

    originals: dict[str, nn.Linear]
    outlier_counts: dict[str, int]
    seconds: float


def apply_strategy(
    model: nn.Module,
    resolved: ResolvedStrategy,
    calibration: Calibration | None,
    cache: LayerCache | None = None,
    levels: StoredLevels | None = None,
    overrides: Mapping[str, torch.Tensor] | None = None,
) -> AppliedStrategy:
    """Swaps quantized modules into `model` as `resolved` says (weights at database levels read from `levels`,
    the weights of `overrides` as given, uncached); returns what `restore` needs to undo it."""
    started = time.perf_counter()
    compute_dtype = COMPUTE_DTYPES[resolved.compute_dtype]
    calibration_key = calibration.key if calibration else None
    originals, outlier_counts = {}, {}
    for name, linear in quantizable_linears(model).items():
        config = resolved.modules[name]
        if _is_identity(config, compute_dtype):
            continue
        if overrides and name in overrides:
            module = QuantizedLinear(overrides[name], linear.bias, config.activation, None, compute_dtype, 0)
        else:
            make = _module_maker(name, linear, config, calibration, compute_dtype, levels)
            settings = tuple(sorted(changed_settings(config.weight).items()))  # registry.configure's changes
            module = cache.get_or_make((name, config, compute_dtype, calibration_key, settings), make) if cache else make()
        originals[name] = linear
        outlier_counts[name] = module.outlier_count
        model.set_submodule(name, module)
    return AppliedStrategy(originals, outlier_counts, time.perf_counter() - started)


def restore(model: nn.Module, applied: AppliedStrategy) -> None:
    """Puts the base modules back in place of the quantized ones."""
    for name, linear in applied.originals.items():
        model.set_submodule(name, linear)


@contextmanager
def strategy_applied(
    model: nn.Module, resolved: ResolvedStrategy, calibration: Calibration | None, cache: LayerCache | None = None,
    levels: StoredLevels | None = None, overrides: Mapping[str, torch.Tensor] | None = None,
) -> Iterator[AppliedStrategy]:
    """Yields while `model` computes under `resolved` (see `apply_strategy`); the base modules are back
    afterwards, even on error."""
    applied = apply_strategy(model, resolved, calibration, cache, levels, overrides)
    try:
        yield applied
    finally:
        restore(model, applied)


@contextmanager
def embedding_applied(model: torch.nn.Module, weights: Mapping[str, torch.Tensor]):
    """Yields while the model's token embedding (and output head) hold `weights` (module name -> weight; a tied
    head follows its embedding); the base values are back afterwards, even on error."""
    modules = dict(model.named_modules())
    saved = {name: modules[name].weight.data for name in weights}
    try:
        for name, weight in weights.items():
            modules[name].weight.data = weight.to(saved[name].device, saved[name].dtype)
        yield
    finally:
        for name, data in saved.items():
            modules[name].weight.data = data
