"""The method registry: one registered `Method` per weight quantization method, and what the rest of agentqat asks it.

A config selects a method by its (format, rounding): the integer-grid methods share format "int" and differ by
rounding (rtn, gptq, awq, hqq); a method with a format of its own (nf4, fp4, fp8_e4m3, llm_int8, GGUF's block types
gguf_q4_0 ... gguf_q8_0) takes the default rounding. Methods sharing a format declare the same capabilities (bits, group sizes, scales, clips, label):
they are the format's. Outside `agentqat/quant/` no module names a method: the strategy schema reads `formats()`
and `roundings()` when it is built, resolve asks `check_weight`, bits asks `Method.storage`, repair asks
`repair_weight`, generators ask the capabilities, and the baseline matrix is one entry per `Method.baseline`.

`register(method)` adds one for good (the built-in modules do at import); `registered(method)` adds one for a
`with` block and `unregister(name)` removes one (tests).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field, fields, replace
from types import MappingProxyType

import torch

from agentqat.quant.base import DEFAULT_ROUNDING, INT_GRID, IntCoder, IntCodes, LayerStats, WeightQuant, WeightQuantizer
from agentqat.quant.storage import Shape, StorageRule

DEPLOY_TARGETS = frozenset({"fake-quant", "vllm-cpu", "vllm-cuda", "gguf"})
INT_BITS = (2, 3, 4, 5, 6, 8)  # the code widths of the integer grid
SCALE_TYPES = ("fp16", "pow2")


@dataclass(frozen=True)
class Problem:
    """One thing a config must change for its method: the WeightQuant field, and a line saying what and how."""

    field: str
    message: str


@dataclass(frozen=True)
class Method:
    """A weight quantization method: how a config selects it, what it accepts, what it costs, who can serve it.

    bits: code widths it stores. group_sizes: the group sizes it takes (None: any that divides the input width, or
    0 for one scale per output channel). scales / clips: scale types and clip ratios it takes (clips None: any).
    label: who stores the format, in messages ("bitsandbytes' nf4"); scaling: how its scales are found ("absmax").
    storage: its scale and zero-point bits (`agentqat.quant.storage`). deploy_targets: the engines that can serve
    some config of it (the conditions on bits, symmetry and groups live with each exporter). baseline: the genes of
    its baseline-matrix entry besides format, rounding and bits (None: no entry). searched: whether generators draw
    its format unless a deployment target asks for it (False for export formats such as GGUF's block types).
    codes: what `quantize` computes before dequantization (`IntCodes`; integer-grid methods), or None.
    blocks: the same for a method inside a GGML type (`GgmlBlocks`, which a GGUF file stores as they are), or None.
    settings: the method's own knobs (a frozen dataclass, e.g. GPTQ's damping, act-order and block size), passed to
    `quantize` and `codes` as the keyword `settings`; None for a method without any. `configure` changes them.
    """

    name: str
    format: str
    rounding: str
    quantize: WeightQuantizer
    storage: StorageRule
    label: str
    deploy_targets: frozenset[str]
    needs_calibration: bool = False
    bits: tuple[int, ...] = INT_BITS
    group_sizes: tuple[int, ...] | None = None
    scales: tuple[str, ...] = SCALE_TYPES
    clips: tuple[float, ...] | None = None
    scaling: str = "min/max"
    baseline: dict | None = field(default=None, compare=False)
    searched: bool = True
    codes: IntCoder | None = field(default=None, compare=False)
    blocks: Callable | None = field(default=None, compare=False)
    settings: object | None = None

    def __post_init__(self) -> None:
        unknown = sorted(self.deploy_targets - DEPLOY_TARGETS)
        if unknown:
            raise ValueError(f"method {self.name!r}: unknown deploy targets {unknown}; known: {sorted(DEPLOY_TARGETS)}")
        if not self.bits or not self.scales or self.clips == () or self.group_sizes == ():
            raise ValueError(f"method {self.name!r}: bits, scales, clips and group sizes must allow some value")

    @property
    def options(self) -> dict:
        """Returns the keyword arguments `quantize`, `codes` and `blocks` take beside (weight, config, stats)."""
        return {} if self.settings is None else {"settings": self.settings}

    @property
    def capabilities(self) -> tuple:
        """Returns what methods sharing a format must agree on."""
        return self.bits, self.group_sizes, self.scales, self.clips, self.label, self.scaling

    def takes_group(self, group_size: int, in_features: int) -> bool:
        """Returns whether the method stores groups of this size (0: per channel) on a module of this input width."""
        divides = group_size == 0 or in_features % group_size == 0
        return divides and (self.group_sizes is None or group_size in self.group_sizes)

    def check(self, config: WeightQuant, shape: Shape) -> list[Problem]:
        """Returns one Problem per field of a quantized config the method cannot store (a group size that does not
        divide the input width is the caller's to report: it holds for every method)."""
        problems = []
        if config.bits not in self.bits:
            problems.append(Problem("bits", (
                f"format {self.format} stores {'/'.join(map(str, self.bits))}-bit codes but bits is {config.bits}; "
                f"set bits to {self.bits[0]} or format to {INT_GRID}"
            )))  # fmt: skip
        if self.group_sizes is not None and config.group_size not in self.group_sizes:
            if self.group_sizes == (0,):
                line = f"{self.label} scales each output row; set group_size 0, not {config.group_size}"
            else:
                sizes = ", ".join(map(str, self.group_sizes))
                line = f"{self.label} takes blocks of {sizes}, not {config.group_size or 'per channel'}"
            problems.append(Problem("group_size", line))
        if self.clips is not None and config.clip not in self.clips:
            line = f"{self.label} scales by the block's {self.scaling}; set clip {self.clips[0]}"
            problems.append(Problem("clip", line))
        if config.scale not in self.scales:
            problems.append(Problem("scale", (
                f"{self.label} keeps its own {self.scaling} scales; {config.scale} scales apply to "
                f"{' and '.join(formats_taking_scale(config.scale))}; set scale {self.scales[0]}"
            )))  # fmt: skip
        return problems

    def repair(self, config: WeightQuant, in_features: int, group_sizes: Sequence[int]) -> WeightQuant:
        """Returns the nearest config of this method on a module of this input width: its format and rounding, the
        nearest of `group_sizes` it takes there (`nearest_size`), its first scale type and clip for others."""
        sizes = tuple(g for g in group_sizes if self.takes_group(g, in_features))
        return replace(
            config,
            format=self.format,
            rounding=self.rounding,
            group_size=nearest_size(config.group_size, sizes),
            scale=config.scale if config.scale in self.scales else self.scales[0],
            clip=config.clip if self.clips is None or config.clip in self.clips else self.clips[0],
        )


_METHODS: dict[str, Method] = {}
METHODS = MappingProxyType(_METHODS)  # name -> Method, in registration order (read-only view)


def register(method: Method) -> Method:
    """Returns `method` after adding it to the registry; raises ValueError for a clash with a registered one."""
    if method.name in _METHODS:
        raise ValueError(f"method {method.name!r} registered twice")
    if find(method.format, method.rounding) is not None:
        raise ValueError(f"format {method.format} with rounding {method.rounding} already selects a method")
    same_format = methods_on(method.format)
    if same_format and same_format[0].capabilities != method.capabilities:
        raise ValueError(f"method {method.name!r} must declare the capabilities of format {method.format}'s methods")
    _METHODS[method.name] = method
    return method


def unregister(name: str) -> Method:
    """Returns the method removed from the registry."""
    if _METHODS.get(name) is find(INT_GRID, DEFAULT_ROUNDING):
        raise ValueError(f"method {name!r} is what the default config selects; it cannot be removed")
    return _METHODS.pop(name)


def configure(name: str, **changes) -> Method:
    """Returns the registered method `name` after replacing fields of its settings (ValueError for a method without
    settings or an unknown field). It holds for this process only: Ray's evaluator processes keep the defaults, and
    the level database and the layer cache key on changed settings (`changed_settings`); `configured` undoes it."""
    method = _METHODS[name]
    if method.settings is None:
        raise ValueError(f"method {name!r} has no settings")
    try:
        settings = replace(method.settings, **changes)
    except TypeError as error:
        raise ValueError(f"method {name!r}: {error}") from error
    _METHODS[name] = replace(method, settings=settings)
    return _METHODS[name]


def changed_settings(config: WeightQuant) -> dict:
    """Returns the settings of the config's method that differ from their dataclass defaults (empty when none do, or
    for bits 16): what a cache of quantized weights must key on besides the config."""
    method = find(config.format, config.rounding) if config.bits != 16 else None
    if method is None or method.settings is None:
        return {}
    default = type(method.settings)()
    return {f.name: getattr(method.settings, f.name) for f in fields(method.settings)
            if getattr(method.settings, f.name) != getattr(default, f.name)}  # fmt: skip


@contextmanager
def configured(name: str, **changes) -> Iterator[Method]:
    """Configures method `name` for the `with` block and restores its settings after."""
    previous = _METHODS[name]
    try:
        yield configure(name, **changes)
    finally:
        _METHODS[name] = previous


@contextmanager
def while_registered(item, add: Callable, remove: Callable) -> Iterator:
    """Adds a named `item` by `add` for the `with` block and removes it by `remove(item.name)` after."""
    add(item)
    try:
        yield item
    finally:
        remove(item.name)


def registered(method: Method) -> AbstractContextManager[Method]:
    """Registers `method` for the `with` block and removes it after."""
    return while_registered(method, register, unregister)


def find(weight_format: str, rounding: str) -> Method | None:
    """Returns the method a (format, rounding) pair selects, or None."""
    return next((m for m in _METHODS.values() if m.format == weight_format and m.rounding == rounding), None)


def method_of(config: WeightQuant) -> Method:
    """Returns the method a config selects; raises ValueError when its format and rounding select none."""
    method = find(config.format, config.rounding)
    if method is None:
        raise ValueError(f"no registered method quantizes format {config.format!r} with rounding {config.rounding!r}")
    return method


def storing_method(config: WeightQuant) -> Method:
    """Returns the method that stores a config: the one it selects, else its format's first (a rounding that is not
    the format's is left out, as `check_weight` reports)."""
    return find(config.format, config.rounding) or format_method(config.format)


def _unique(values: Iterator[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(values))


def formats() -> tuple[str, ...]:
    """Returns the registered formats, in registration order."""
    return _unique(m.format for m in _METHODS.values())


def roundings() -> tuple[str, ...]:
    """Returns the registered roundings, in registration order."""
    return _unique(m.rounding for m in _METHODS.values())


def methods_on(weight_format: str) -> tuple[Method, ...]:
    """Returns the methods of a format (its roundings), in registration order."""
    return tuple(m for m in _METHODS.values() if m.format == weight_format)


def format_method(weight_format: str) -> Method:
    """Returns the first method of a format: it speaks for the format's capabilities."""
    methods = methods_on(weight_format)
    if not methods:
        raise ValueError(f"no registered method has format {weight_format!r}; known: {', '.join(formats())}")
    return methods[0]


def formats_with_rounding(rounding: str) -> tuple[str, ...]:
    """Returns the formats a rounding works on."""
    return _unique(m.format for m in _METHODS.values() if m.rounding == rounding)


def formats_taking_scale(scale: str) -> tuple[str, ...]:
    """Returns the formats whose methods take this scale type."""
    return _unique(m.format for m in _METHODS.values() if scale in m.scales)


def nearest_size(size: int, sizes: Sequence[int]) -> int:
    """Returns `size` if allowed, else the largest smaller allowed size, else the smallest larger one, else 0."""
    if size in sizes:
        return size
    below = [s for s in sizes if 0 < s < size]
    above = [s for s in sizes if s > size]
    return max(below) if below else min(above) if above else 0


def _listed(items: Sequence[str], last: str) -> str:
    """Returns "a, b and c" (or "a, b or c")."""
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} {last} {items[-1]}"


def check_weight(config: WeightQuant, shape: Shape) -> list[Problem]:
    """Returns one Problem per field of a quantized config that its method cannot store on this module."""
    method = find(config.format, config.rounding)
    if method is not None:
        return method.check(config, shape)
    owner = format_method(config.format)
    grids = formats_with_rounding(config.rounding)
    mismatch = Problem("rounding", (
        f"rounding {config.rounding} works on {_listed([format_method(f).label for f in grids], 'and')} only, not on "
        f"format {config.format}; use rounding {' or '.join(m.rounding for m in methods_on(config.format))} or "
        f"format {_listed(grids, 'or')}"
    ))  # fmt: skip
    return [mismatch, *owner.check(config, shape)]


def repair_weight(config: WeightQuant, in_features: int, group_sizes: Sequence[int]) -> WeightQuant:
    """Returns the nearest valid config on a module of this input width: the config's storing method where it
    stores `bits` and takes one of `group_sizes` there, else the config's rounding on the integer grid (the default
    rounding if it has none there), repaired by `Method.repair`."""
    method = storing_method(config)
    if config.bits not in method.bits or not any(method.takes_group(g, in_features) for g in group_sizes):
        method = find(INT_GRID, config.rounding) or format_method(INT_GRID)
    return method.repair(config, in_features, group_sizes)


def quantize_weight(weight: torch.Tensor, config: WeightQuant, stats: LayerStats | None = None) -> torch.Tensor:
    """Returns `weight` fake-quantized by the method the config selects (a copy for bits 16)."""
    if config.bits == 16:
        return weight.detach().to(torch.float32).clone()
    method = method_of(config)
    if method.needs_calibration and stats is None:
        raise ValueError(f"quantizer {method.name!r} needs calibration statistics")
    return method.quantize(weight.detach().to(torch.float32), config, stats, **method.options)


def quantize_codes(weight: torch.Tensor, config: WeightQuant, stats: LayerStats | None = None) -> IntCodes | None:
    """Returns the codes, scales and zero points of `weight` quantized as the config says (`quantize_weight` returns
    their dequantization, bit for bit), or None when the config's method has no codes (or bits is 16)."""
    if config.bits == 16:
        return None
    method = method_of(config)
    if method.codes is None:
        return None
    if method.needs_calibration and stats is None:
        raise ValueError(f"quantizer {method.name!r} needs calibration statistics")
    return method.codes(weight.detach().to(torch.float32), config, stats, **method.options)


def quantize_blocks(weight: torch.Tensor, config: WeightQuant, stats: LayerStats | None = None):
    """Returns the GGML blocks (`agentqat.engines.ggml_blocks.GgmlBlocks`) whose values `quantize_weight` returns, bit
    for bit, or None when the config's method works in no GGML type's blocks (or bits is 16)."""
    method = method_of(config) if config.bits != 16 else None
    if method is None or method.blocks is None:
        return None
    if method.needs_calibration and stats is None:
        raise ValueError(f"quantizer {method.name!r} needs calibration statistics")
    return method.blocks(weight.detach().to(torch.float32), config, stats, **method.options)
