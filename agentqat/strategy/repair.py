"""Repair: makes a layout (or a document) resolve against the model and fit the bit budget.

Three steps, each leaving alone what already holds:

1. validity, module by module (`fix_config`, deterministic): the weight config becomes the nearest its method
   takes (`agentqat.quant.registry.repair_weight`: a format that does not store `bits`, or takes no allowed group
   size on the module, becomes int; a rounding the format does not take becomes the format's; scales, clips and
   group sizes the method does not take become its first, the nearest group size that fits: the largest smaller
   one, else the smallest larger one, else per channel); fp8 activations below 8 bits become 8-bit. Weights left
   at 16 bits are not checked by resolution and are left as they are.
2. the rule limit: while the compiled document would need more than MAX_RULES rules, the modules of the least
   used config that can move move to the most used config valid for them.
3. the budget: while over budget, a config class (its modules) is made cheaper by the first of CHEAPER_STEPS
   that lowers its cost. The class is drawn among those with the most bits (water-filling from the top, so that a
   sample keeps its low-bit groups instead of collapsing to 2 bits elsewhere) with probability proportional to
   their weights, sparing the modules an operator just changed while others can pay. The steps: bits one step
   down, format int, no outliers, no SmoothQuant, a coarser group, power-of-two scales, symmetric, the default
   rounding (rtn) instead of a dearer one (hqq's float zeros). Every config reaches the cheapest config the
   choices allow this way, and SearchSpace refuses budgets below that, so repair always ends.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Collection, Iterable
from dataclasses import replace
from functools import lru_cache

import numpy as np

from agentqat.models import ModelFacts
from agentqat.quant.base import DEFAULT_ROUNDING, INT_GRID
from agentqat.quant.registry import format_method, repair_weight, storing_method
from agentqat.quant.schemes import NO_OUTLIERS, keeps_outliers, transforms_of, without_transforms
from agentqat.strategy.bits import strategy_bits
from agentqat.strategy.document import MAX_RULES, StrategyError, parse_strategy
from agentqat.strategy.layout import Layout, compile_rules, document_of, layout_bits, layout_of, module_cost
from agentqat.strategy.resolve import ModuleConfig, resolve_strategy
from agentqat.strategy.space import GeneChoices, SearchSpace


def valid_group_sizes(weight_format: str, widths: Iterable[int], choices: GeneChoices) -> tuple[int, ...]:
    """Returns the group sizes (0 = per channel) a format may use on modules of every one of these input widths."""
    method, widths = format_method(weight_format), tuple(widths)
    return tuple(g for g in choices.group_sizes if all(method.takes_group(g, width) for width in widths))


@lru_cache(maxsize=1 << 14)
def fix_config(config: ModuleConfig, in_features: int, choices: GeneChoices) -> ModuleConfig:
    """Returns the config made valid for a module of this input width (step 1 of the module docstring)."""
    weight, activation = config.weight, config.activation
    if weight.bits != 16:
        weight = repair_weight(weight, in_features, choices.group_sizes)
    if activation.format == "fp8_e4m3" and activation.bits not in (8, 16):
        activation = replace(activation, bits=8)
    return ModuleConfig(weight, activation, config.outliers)


def fix_layout(layout: Layout, facts: ModelFacts, choices: GeneChoices) -> Layout:
    """Returns the layout with every module's config made valid for it."""
    fixed = (fix_config(c, info.in_features, choices) for c, info in zip(layout.configs, facts.linears, strict=True))
    return Layout(tuple(fixed), layout.compute_dtype)


def _cap_rules(layout: Layout, facts: ModelFacts, choices: GeneChoices) -> Layout:
    """Returns the layout with few enough configs that its document needs at most MAX_RULES rules (step 2)."""
    while len(compile_rules(layout, facts)[1]) > MAX_RULES:
        classes = layout.classes()
        by_use = sorted(classes, key=lambda c: -len(classes[c]))

        def home(index: int, leaving: ModuleConfig) -> ModuleConfig | None:
            width = facts.linears[index].in_features
            return next((c for c in by_use if c != leaving and fix_config(c, width, choices) == c), None)

        movable = [c for c in reversed(by_use) if all(home(i, c) is not None for i in classes[c])]
        if not movable:
            raise RuntimeError(f"cannot merge the {len(classes)} configs of a layout into {MAX_RULES} rules")
        leaving = movable[0]
        layout = layout.replaced(classes[leaving], [home(i, leaving) for i in classes[leaving]])
    return layout


def _lower_bits(config: ModuleConfig, in_features: int, choices: GeneChoices) -> ModuleConfig | None:
    lower = [b for b in choices.bits if b < config.weight.bits]
    return replace(config, weight=replace(config.weight, bits=max(lower))) if lower else None


def _int_format(config: ModuleConfig, in_features: int, choices: GeneChoices) -> ModuleConfig | None:
    return replace(config, weight=replace(config.weight, format=INT_GRID)) if config.weight.format != INT_GRID else None


def _no_outliers(config: ModuleConfig, in_features: int, choices: GeneChoices) -> ModuleConfig | None:
    if not keeps_outliers(config.outliers):
        return None
    return replace(config, outliers=replace(config.outliers, method=NO_OUTLIERS, fraction=0.0))


def _no_smoothing(config: ModuleConfig, in_features: int, choices: GeneChoices) -> ModuleConfig | None:
    if not transforms_of(config.activation):
        return None
    return replace(config, activation=without_transforms(config.activation))


def _coarser_group(config: ModuleConfig, in_features: int, choices: GeneChoices) -> ModuleConfig | None:
    weight = config.weight
    if weight.group_size == 0:
        return None
    sizes = valid_group_sizes(weight.format, (in_features,), choices)
    larger = [s for s in sizes if s > weight.group_size] or [s for s in sizes if s == 0]
    return replace(config, weight=replace(weight, group_size=min(larger))) if larger else None


def _pow2_scales(config: ModuleConfig, in_features: int, choices: GeneChoices) -> ModuleConfig | None:
    weight = config.weight
    if weight.scale == "pow2" or "pow2" not in storing_method(weight).scales or "pow2" not in choices.scales:
        return None
    return replace(config, weight=replace(weight, scale="pow2"))


def _symmetric(config: ModuleConfig, in_features: int, choices: GeneChoices) -> ModuleConfig | None:
    weight = config.weight
    if weight.symmetric or True not in choices.symmetric:  # only lowers the cost of grids with zero points
        return None
    return replace(config, weight=replace(weight, symmetric=True))


def _default_rounding(config: ModuleConfig, in_features: int, choices: GeneChoices) -> ModuleConfig | None:
    if config.weight.rounding == DEFAULT_ROUNDING:  # lowers the cost of roundings that store more (hqq's float zeros)
        return None
    return replace(config, weight=replace(config.weight, rounding=DEFAULT_ROUNDING))


CheaperStep = Callable[[ModuleConfig, int, GeneChoices], "ModuleConfig | None"]
CHEAPER_STEPS: tuple[CheaperStep, ...] = (
    _lower_bits, _int_format, _no_outliers, _no_smoothing, _coarser_group, _pow2_scales, _symmetric, _default_rounding,
)  # fmt: skip


def _cheapened(layout: Layout, indices: list[int], space: SearchSpace) -> Layout | None:
    """Returns the layout with these modules (one config) made cheaper by the first step that lowers their cost."""
    infos = [space.facts.linears[i] for i in indices]
    config = layout.configs[indices[0]]
    before = sum(module_cost(config, info) for info in infos)
    for step in CHEAPER_STEPS:
        changed = [step(config, info.in_features, space.choices) or config for info in infos]
        fixed = [fix_config(c, info.in_features, space.choices) for c, info in zip(changed, infos)]
        if sum(module_cost(c, info) for c, info in zip(fixed, infos)) < before:
            return layout.replaced(indices, fixed)
    return None


def _fit_budget(layout: Layout, space: SearchSpace, rng: np.random.Generator, spared: Collection[int]) -> Layout:
    """Returns the layout made cheaper class by class until it fits the budget (step 3)."""
    facts, everyone = space.facts, range(len(layout.configs))
    while layout_bits(layout, facts) > space.bits_budget:
        options: list[tuple[Layout, int, int]] = []  # (cheaper layout, bits of the class, weights of the class)
        for pool in ([i for i in everyone if i not in spared], everyone):
            for config, indices in layout.classes(pool).items():
                cheaper = _cheapened(layout, indices, space)
                if cheaper is not None:
                    weights = sum(facts.linears[i].in_features * facts.linears[i].out_features for i in indices)
                    options.append((cheaper, config.weight.bits, weights))
            if options:
                break
        if not options:
            raise RuntimeError(f"cannot bring a layout within {space.bits_budget} bits per weight")
        widest = max(bits for _, bits, _ in options)
        options = [option for option in options if option[1] == widest]
        sizes = np.array([weights for _, _, weights in options], dtype=np.float64)
        layout = options[rng.choice(len(options), p=sizes / sizes.sum())][0]
    return layout


def repair_layout(
    layout: Layout, space: SearchSpace, rng: np.random.Generator, spared: Collection[int] = ()
) -> Layout:
    """Returns the layout made valid, within the rule limit and within budget (the three steps of the docstring).

    `spared`: indices of modules whose configs the budget step changes only when no other module can pay.
    """
    layout = fix_layout(layout, space.facts, space.choices)
    while True:  # making a layout cheaper can split a config by input width: check the rule limit again
        layout = _fit_budget(_cap_rules(layout, space.facts, space.choices), space, rng, frozenset(spared))
        if len(compile_rules(layout, space.facts)[1]) <= MAX_RULES:
            return layout


def within(document: dict, space: SearchSpace) -> bool:
    """Returns whether the document resolves against the model and fits the budget."""
    try:
        resolved = resolve_strategy(parse_strategy(document), space.facts)
    except StrategyError:
        return False
    return strategy_bits(resolved, space.facts).bits_per_weight <= space.bits_budget


def repair(document: dict, space: SearchSpace, rng: np.random.Generator) -> dict:
    """Returns a copy of the document if it is valid and within budget, else its repaired layout compiled.

    Raises StrategyError for a document that breaks the schema: there is nothing to repair from.
    """
    if within(document, space):
        return copy.deepcopy(document)
    layout = repair_layout(layout_of(document, space.facts), space, rng)
    return document_of(layout, space.facts, "repaired", f"repaired from {document.get('name', 'unnamed')}")
