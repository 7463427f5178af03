"""Outlier policies as registered objects, the way `registry` holds weight methods.

An `OutlierScheme` declares everything the rest of agentqat asks about a policy named by `outliers.method`: its
validation (`problems`), its application (`select`, the mask of entries kept in fp16 beside the codes), what it
stores (`count`, `position_bits`), what reads calibration statistics (`needs_calibration`), the fields that have an
effect (`fields`; canonical ids and prompts drop the others), the engines that serve it (`deploy_targets`) and the
export formats that carry it (`exports`, with `kept` naming what the others have no place for). The strategy schema
reads `outlier_methods()` when it is built, so a registered policy is a value documents may name.

The built-in policies (none, keep_fp16, llm_int8) register in `agentqat.quant.outliers`. `register_outliers(scheme)`
adds one for good, `registered_outliers(scheme)` for a `with` block (tests).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from types import MappingProxyType

import torch

from agentqat.quant.base import LayerStats, OutlierPolicy
from agentqat.quant.registry import DEPLOY_TARGETS, while_registered

OutlierSelector = Callable[[torch.Tensor, OutlierPolicy, "LayerStats | None"], torch.Tensor]
NO_OUTLIERS = "none"
OUTLIER_VALUE_BITS = 16  # each kept entry's fp16 value


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


_SCHEMES: dict[str, OutlierScheme] = {}
OUTLIER_SCHEMES = MappingProxyType(_SCHEMES)  # name -> OutlierScheme, in registration order


def register_outliers(scheme: OutlierScheme) -> OutlierScheme:
    """Returns `scheme` after adding it; raises ValueError when its name is taken."""
    if scheme.name in _SCHEMES:
        raise ValueError(f"outlier policy {scheme.name!r} registered twice")
    _SCHEMES[scheme.name] = scheme
    return scheme


def unregister_outliers(name: str) -> OutlierScheme:
    """Returns the outlier policy removed from the registry (never "none", what every default selects)."""
    if name == NO_OUTLIERS:
        raise ValueError(f"outlier policy {NO_OUTLIERS!r} is the default; it cannot be removed")
    return _SCHEMES.pop(name)


def registered_outliers(scheme: OutlierScheme) -> AbstractContextManager[OutlierScheme]:
    """Registers `scheme` for the `with` block and removes it after."""
    return while_registered(scheme, register_outliers, unregister_outliers)


def outlier_methods() -> tuple[str, ...]:
    """Returns the registered outlier policy names, in registration order (the schema's enum)."""
    return tuple(_SCHEMES)


def outlier_scheme(policy: OutlierPolicy | str) -> OutlierScheme:
    """Returns the registered scheme of a policy (or of a policy name); raises ValueError for an unknown one."""
    name = policy if isinstance(policy, str) else policy.method
    if name not in _SCHEMES:
        raise ValueError(f"no registered outlier policy {name!r}; known: {', '.join(_SCHEMES)}")
    return _SCHEMES[name]


def keeps_outliers(policy: OutlierPolicy) -> bool:
    """Returns whether the policy keeps any weights beside the codes (any method but "none")."""
    return policy.method != NO_OUTLIERS
