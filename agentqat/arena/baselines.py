"""The baseline matrix: standard methods at standard bit widths and calibration budgets, as strategies.

Every entry is an ordinary strategy document, so baselines play the same matches as discovered strategies.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from agentqat.arena.request import MatchRequest

DEFAULT_BITS = (8, 4, 3, 2)
DEFAULT_CALIBRATION_BUDGETS = (4, 16, 48)  # calibration windows of the arena's window length


@dataclass(frozen=True)
class BaselineMethod:
    """A standard method: the weight genes it sets, the bit widths it supports, whether it calibrates."""

    name: str
    genes: dict
    bits: tuple[int, ...]
    calibrated: bool = False


METHODS = (
    BaselineMethod("rtn", {"weight": {"group_size": 64, "symmetric": False, "rounding": "rtn"}}, (8, 4, 3, 2)),
    BaselineMethod("gptq", {"weight": {"group_size": 64, "symmetric": False, "rounding": "gptq"}}, (8, 4, 3, 2), True),
    BaselineMethod("awq", {"weight": {"group_size": 64, "symmetric": False, "rounding": "awq"}}, (8, 4, 3, 2), True),
    BaselineMethod("hqq", {"weight": {"group_size": 64, "symmetric": False, "rounding": "hqq"}}, (8, 4, 3, 2)),
    BaselineMethod(
        "smoothquant-w8a8",
        {
            "weight": {"group_size": 0, "symmetric": True, "rounding": "rtn"},
            "activation": {"bits": 8, "format": "int", "granularity": "per_token", "smooth_alpha": 0.5},
        },
        (8,),
        True,
    ),
    BaselineMethod("nf4", {"weight": {"group_size": 64, "format": "nf4"}}, (4,)),
    BaselineMethod("fp4", {"weight": {"group_size": 64, "format": "fp4"}}, (4,)),
    BaselineMethod("fp8-e4m3", {"weight": {"group_size": 0, "symmetric": True, "format": "fp8_e4m3"}}, (8,)),
    BaselineMethod(
        "llm-int8",
        {"weight": {"group_size": 0, "format": "llm_int8"}, "outliers": {"method": "llm_int8", "threshold": 6.0}},
        (8,),
        True,
    ),
)


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
    for method in METHODS:
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
