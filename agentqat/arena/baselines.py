"""The baseline matrix: standard methods at standard bit widths and calibration budgets, as strategies.

One entry per registered weight method that declares a baseline (`Method.baseline`), named like the method with
dashes ("fp8-e4m3"), plus the baselines that are not a weight method (SmoothQuant W8A8). Every entry is an ordinary
strategy document, so baselines play the same matches as discovered strategies.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from agentqat.arena.request import MatchRequest
from agentqat.quant.base import DEFAULT_ROUNDING, ActivationQuant, OutlierPolicy, WeightQuant
from agentqat.quant.registry import METHODS, Method
from agentqat.strategy.resolve import ModuleConfig, module_needs_calibration

DEFAULT_BITS = (8, 4, 3, 2)
DEFAULT_CALIBRATION_BUDGETS = (4, 16, 48)  # calibration windows of the arena's window length


@dataclass(frozen=True)
class BaselineMethod:
    """A standard method: the genes it sets besides the weight bits, and the bit widths it supports."""

    name: str
    genes: dict
    bits: tuple[int, ...]

    @property
    def calibrated(self) -> bool:
        """Returns whether the method reads calibration statistics (it then plays once per calibration budget)."""
        defaults = {"weight": WeightQuant(), "activation": ActivationQuant(), "outliers": OutlierPolicy()}
        config = {group: replace(value, **self.genes.get(group, {})) for group, value in defaults.items()}
        return module_needs_calibration(ModuleConfig(**config))


SMOOTHQUANT_W8A8 = BaselineMethod(
    "smoothquant-w8a8",
    {
        "weight": {"group_size": 0, "symmetric": True, "rounding": DEFAULT_ROUNDING},
        "activation": {"bits": 8, "format": "int", "granularity": "per_token", "smooth_alpha": 0.5},
    },
    (8,),
)


def of_method(method: Method) -> BaselineMethod:
    """Returns the baseline entry of a registered method (its `baseline` genes, its format and rounding)."""
    genes = {group: dict(values) for group, values in method.baseline.items()}
    genes["weight"] = {**genes.get("weight", {}), "format": method.format, "rounding": method.rounding}
    return BaselineMethod(method.name.replace("_", "-"), genes, tuple(sorted(method.bits, reverse=True)))


def baseline_methods() -> tuple[BaselineMethod, ...]:
    """Returns the matrix's methods: every registered method with a baseline, in registration order, then the rest."""
    return (*(of_method(m) for m in METHODS.values() if m.baseline is not None), SMOOTHQUANT_W8A8)


def baseline_document(method: BaselineMethod, bits: int) -> dict:
    """Returns the strategy document of `method` at `bits` bits on every linear layer."""
    genes = {group: dict(values) for group, values in method.genes.items()}
    genes["weight"]["bits"] = bits
    return {"schema_version": 1, "name": f"{method.name}-w{bits}", "default": genes}


def baseline_requests(
    stage: str,
    seed: int,
    bits: Sequence[int] = DEFAULT_BITS,
    budgets: Sequence[int] = DEFAULT_CALIBRATION_BUDGETS,
    methods: Sequence[str] | None = None,
) -> list[MatchRequest]:
    """Returns one request per (method, bit width it supports, calibration budget if it calibrates)."""
    requests = []
    for method in baseline_methods():
        if methods and method.name not in methods:
            continue
        for width in method.bits:
            if width not in bits:
                continue
            document = baseline_document(method, width)
            for budget in budgets if method.calibrated else (None,):
                named = document if budget is None else {**document, "name": f"{document['name']}-cal{budget}"}
                requests.append(MatchRequest(named, stage, seed, 0, budget))
    return requests
