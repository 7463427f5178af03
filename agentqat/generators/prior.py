"""The shared prior: the seed strategies every arm of a comparison starts from, named in the run's manifest.

Whatever start one generator gets, every generator gets. The evolution loop plays the prior as generation 0 (the
same matches for every arm, charged to each run's budget) before any generator is asked; from generation 1 on,
each generator sees the evaluated prior in its population. No generator has a private start.

The default prior (`uniform_prior`): per rounding in PRIOR_ROUNDINGS the search space allows, the best uniform
integer strategy within the budget (most bits, asymmetric where it fits, then the smallest group; fp32 compute),
as EvoPress starts from uniform GPTQ levels. At a 4.5-bit budget on SmolLM2-135M: 4-bit g64 asymmetric GPTQ and
AWQ. A comparison may add the knapsack allocation (`agentqat compare --prior uniform+knapsack`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from agentqat.quant.base import DEFAULT_ROUNDING, INT_GRID, ActivationQuant, OutlierPolicy, WeightQuant
from agentqat.strategy.layout import Layout, document_of, layout_bits
from agentqat.strategy.repair import repair_layout, valid_group_sizes
from agentqat.strategy.resolve import ModuleConfig
from agentqat.strategy.space import SearchSpace

PRIOR_ROUNDINGS = ("gptq", "awq")


def best_uniform(space: SearchSpace, rounding: str) -> Layout:
    """Returns the best uniform int layout with this rounding within budget: most bits, asymmetric, then the
    smallest group (per channel last); the cheapest repair when nothing uniform fits."""
    choices, facts = space.choices, space.facts
    widths = {info.in_features for info in facts.linears}
    sizes = sorted(valid_group_sizes(INT_GRID, widths, choices), key=lambda g: (g == 0, g))
    layout = None
    for bits in sorted((b for b in choices.bits if b != 16), reverse=True):
        for symmetric in sorted(choices.symmetric):  # False (asymmetric) first where allowed
            for group in sizes:
                weight = WeightQuant(bits=bits, group_size=group, symmetric=symmetric, rounding=rounding)
                layout = Layout((ModuleConfig(weight, ActivationQuant(), OutlierPolicy()),) * len(facts.linears), "fp32")
                if layout_bits(layout, facts) <= space.bits_budget:
                    return layout
    return repair_layout(layout, space, np.random.default_rng(0))


def uniform_prior(space: SearchSpace, roundings: Sequence[str] = PRIOR_ROUNDINGS) -> list[dict]:
    """Returns the default prior: the best uniform strategy within budget per rounding the choices allow (the
    default rounding when they allow none of `roundings`), named "prior-<strategy id>", duplicates dropped."""
    allowed = [r for r in roundings if r in space.choices.roundings] or [DEFAULT_ROUNDING]
    documents: dict[str, dict] = {}
    for rounding in allowed:
        document = document_of(best_uniform(space, rounding), space.facts, "prior", f"uniform {rounding}, best within budget")
        documents.setdefault(document["name"], document)
    return list(documents.values())
