"""Outlier policies, activation formats and input transforms (SmoothQuant) as registered objects, the way
`registry` holds weight methods. Each kind is a `SchemeRegistry`; the strategy schema reads its names when built.

An `OutlierScheme` declares everything the rest of agentqat asks about a policy named by `outliers.method`: its
validation (`problems`), its application (`select`, the mask of entries kept in fp16 beside the codes), what it
stores (`count`, `position_bits`), what reads calibration statistics (`needs_calibration`), the fields that have an
effect (`fields`; canonical ids and prompts drop the others), the engines that serve it (`deploy_targets`) and the
export formats that carry it (`exports`, with `kept` naming what the others have no place for). The strategy schema
reads `outlier_methods()` when it is built, so a registered policy is a value documents may name.

The built-in policies (none, keep_fp16, llm_int8) register in `agentqat.quant.outliers`. `register_outliers(scheme)`
adds one for good, `registered_outliers(scheme)` for a `with` block (tests).

An `ActivationScheme` per `activation.format` (int, fp8_e4m3; `agentqat.quant.activation`) declares its fake
quantization and the widths it takes. An `InputTransform` (SmoothQuant, `agentqat.quant.activation`) declares the
ActivationQuant field that turns it on, its divisor, its storage bits, its deploy targets and export formats.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import Generic, TypeVar

import torch

from agentqat.quant.base import ActivationQuant, LayerStats, OutlierPolicy
from agentqat.quant.registry import DEPLOY_TARGETS, while_registered

OutlierSelector = Callable[[torch.Tensor, OutlierPolicy, "LayerStats | None"], torch.Tensor]
NO_OUTLIERS = "none"
OUTLIER_VALUE_BITS = 16  # each kept entry's fp16 value
S = TypeVar("S")


def _never(policy: OutlierPolicy) -> bool:
    return False


def _no_problems(policy: OutlierPolicy) -> list[str]:
    return []


@dataclass(frozen=True)
class OutlierScheme:
    """An outlier policy: which weights it keeps in fp16, what that costs, who can serve and export it.

    select(weight, policy, stats): the bool mask [out, in] of kept entries (the policy's application; quantization
    runs around them). count(policy, in_features, out_features, stats): how many it is expected to keep (stats None:
    before calibration). position_bits(count, out_features): the bits that locate them (their values cost
    OUTLIER_VALUE_BITS each). fields: the OutlierPolicy fields it reads besides `method`. needs_calibration(policy):
    whether the policy reads calibration statistics. problems(policy): what a policy must change, one line each.
    deploy_targets: the engines that serve it. exports: the export formats that carry it (None: every one). kept:
    what it stores beside the codes ("outlier weights in fp16"), for the refusals of engines and formats.
    """

    name: str
    select: OutlierSelector
    count: Callable[[OutlierPolicy, int, int, LayerStats | None], int]
    position_bits: Callable[[int, int], int]
    fields: tuple[str, ...]
    deploy_targets: frozenset[str]
    exports: frozenset[str] | None
    kept: str
    needs_calibration: Callable[[OutlierPolicy], bool] = _never
    problems: Callable[[OutlierPolicy], list[str]] = _no_problems

    def __post_init__(self) -> None:
        unknown = sorted(self.deploy_targets - DEPLOY_TARGETS)
        if unknown:
            raise ValueError(f"outlier policy {self.name!r}: unknown deploy targets {unknown}")
        unknown_fields = sorted(set(self.fields) - (set(OutlierPolicy.__dataclass_fields__) - {"method"}))
        if unknown_fields:
            raise ValueError(f"outlier policy {self.name!r}: no OutlierPolicy fields {unknown_fields}")

    @property
    def unused_fields(self) -> tuple[str, ...]:
        """Returns the OutlierPolicy fields that have no effect under this policy."""
        return tuple(f for f in OutlierPolicy.__dataclass_fields__ if f != "method" and f not in self.fields)

    def carried_by(self, export_format: str) -> bool:
        """Returns whether an export format holds what the policy keeps."""
        return self.exports is None or export_format in self.exports

    def stored_bits(self, count: int, out_features: int) -> int:
        """Returns the bits of `count` kept entries: their fp16 values and their positions."""
        return OUTLIER_VALUE_BITS * count + self.position_bits(count, out_features)


class SchemeRegistry(Generic[S]):
    """Named schemes of one kind, in registration order; `protected` names a scheme that cannot be removed."""

    def __init__(self, kind: str, protected: str | None = None) -> None:
        self.kind, self.protected = kind, protected
        self._schemes: dict[str, S] = {}
        self.view = MappingProxyType(self._schemes)  # name -> scheme (read-only)

    def register(self, scheme: S) -> S:
        """Returns `scheme` after adding it; raises ValueError when its name is taken."""
        if scheme.name in self._schemes:
            raise ValueError(f"{self.kind} {scheme.name!r} registered twice")
        self._schemes[scheme.name] = scheme
        return scheme

    def unregister(self, name: str) -> S:
        """Returns the scheme removed from the registry."""
        if name == self.protected:
            raise ValueError(f"{self.kind} {name!r} is the default; it cannot be removed")
        return self._schemes.pop(name)

    def registered(self, scheme: S) -> AbstractContextManager[S]:
        """Registers `scheme` for the `with` block and removes it after."""
        return while_registered(scheme, self.register, self.unregister)

    def names(self) -> tuple[str, ...]:
        """Returns the registered names, in registration order (the strategy schema's enum)."""
        return tuple(self._schemes)

    def get(self, name: str) -> S:
        """Returns the scheme registered under `name`; raises ValueError for an unknown one."""
        if name not in self._schemes:
            raise ValueError(f"no registered {self.kind} {name!r}; known: {', '.join(self._schemes)}")
        return self._schemes[name]


OUTLIERS: SchemeRegistry[OutlierScheme] = SchemeRegistry("outlier policy", NO_OUTLIERS)
OUTLIER_SCHEMES = OUTLIERS.view  # name -> OutlierScheme, in registration order
register_outliers, unregister_outliers, registered_outliers = OUTLIERS.register, OUTLIERS.unregister, OUTLIERS.registered
outlier_methods = OUTLIERS.names


def outlier_scheme(policy: OutlierPolicy | str) -> OutlierScheme:
    """Returns the registered scheme of a policy (or of a policy name); raises ValueError for an unknown one."""
    return OUTLIERS.get(policy if isinstance(policy, str) else policy.method)


def keeps_outliers(policy: OutlierPolicy) -> bool:
    """Returns whether the policy keeps any weights beside the codes (any method but "none")."""
    return policy.method != NO_OUTLIERS


@dataclass(frozen=True)
class ActivationScheme:
    """An activation format (`activation.format`): how a module's input is fake-quantized per forward.

    quantize(x, config): x [..., in] in float32, fake-quantized (the application; never called for bits 16).
    bits: the widths it takes (16, activations left alone, is always allowed). Activations are quantized on the
    fly, so they store nothing; the engines that run a format say so in their own tables (`strategy.deploy`).
    """

    name: str
    quantize: Callable[[torch.Tensor, ActivationQuant], torch.Tensor]
    bits: tuple[int, ...]

    def problems(self, config: ActivationQuant) -> list[str]:
        """Returns what an activation config of this format must change, one line each."""
        if config.bits == 16 or config.bits in self.bits:
            return []
        return [f"{self.name} activations are {'/'.join(map(str, self.bits))}-bit, not {config.bits}; set bits to {self.bits[-1]}"]


ACTIVATIONS: SchemeRegistry[ActivationScheme] = SchemeRegistry("activation format", "int")
activation_formats = ACTIVATIONS.names


@dataclass(frozen=True)
class InputTransform:
    """A transform of a module's input folded into its weight (SmoothQuant): X' = X / s, W' = W diag(s).

    field: the ActivationQuant field that turns it on (set: on, None: off). divisor(abs_max, weight, value): the
    per-input-channel divisor s from the input's calibration max |X| (so it reads calibration statistics).
    stored_bits(in_features): what storing s costs. deploy_targets / exports: the engines that serve it and the
    export formats that carry it (None: every one). label names it in refusals ("SmoothQuant").
    """

    name: str
    field: str
    divisor: Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]
    stored_bits: Callable[[int], int]
    deploy_targets: frozenset[str]
    exports: frozenset[str] | None
    label: str

    def __post_init__(self) -> None:
        if self.field not in ActivationQuant.__dataclass_fields__:
            raise ValueError(f"input transform {self.name!r}: no ActivationQuant field {self.field!r}")

    def carried_by(self, export_format: str) -> bool:
        """Returns whether an export format holds the transform's divisors."""
        return self.exports is None or export_format in self.exports


TRANSFORMS: SchemeRegistry[InputTransform] = SchemeRegistry("input transform")


def transforms_of(config: ActivationQuant) -> tuple[InputTransform, ...]:
    """Returns the registered input transforms an activation config turns on."""
    return tuple(t for t in TRANSFORMS.view.values() if getattr(config, t.field) is not None)


def without_transforms(config: ActivationQuant) -> ActivationQuant:
    """Returns the activation config with every input transform turned off."""
    return replace(config, **{t.field: None for t in transforms_of(config)})
