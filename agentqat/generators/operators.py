"""Variation operators: mutations `(document, space, rng) -> document` and crossovers `(a, b, space, rng) -> document`.

Every operator works on layouts, returns a new document that resolves against the model and fits the budget,
and never modifies its inputs. Children are named "<operator>-<strategy id>", with the parents in `notes`.

A mutation changes one region: a config class (the modules sharing one config) drawn uniformly among those the
mutation applies to, narrowed with P 0.5 to a contiguous run of its layers and with P 1/3 to one role (attn, mlp)
or module name. `repair_layout` then fixes validity and budget, sparing the region: a bit raised in the region is
paid for by the widest other modules (a level switch). A change is drawn again, up to ATTEMPTS times, until the
region keeps exactly what the change gave it; failing that, the first child whose region changed at all is
taken. A mutation with nothing to change returns the document repaired (a copy when it was valid).

    bit_shift          the region's bits one step up or down over choices.bits
    layer_reassign     a boundary between two layer spans of different configs moves: one span grows, its
                       neighbour shrinks (to nothing at most); nothing to move in a strategy uniform over layers
    scale_swap         fp16 <-> pow2 scales (formats taking both: int and fp8)
    outlier_toggle     none / keep_fp16 (fraction up to MAX_KEPT_FRACTION, criterion) / llm_int8 (threshold):
                       to one of the other two
    rounding_swap      another rounding of the format (int: rtn, gptq, awq, hqq)
    group_size_change  another group size valid for every module of the region

A crossover's child takes every layer's configs from one parent: `layerwise` tosses a coin per layer,
`blockwise` cuts the layers at 1-3 random points into blocks taken alternately from each parent. A child over
budget takes layers back from the parent that is cheaper there (random layers, one at a time) until it fits, so
all its genes still come from its parents; its compute dtype comes from a random parent.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import replace
from functools import partial

import numpy as np

from agentqat.models import ModelFacts
from agentqat.quant.registry import find, format_method
from agentqat.quant.schemes import outlier_scheme
from agentqat.strategy.document import strategy_id
from agentqat.strategy.layout import Layout, document_of, layout_of, module_cost
from agentqat.strategy.repair import fix_layout, repair, repair_layout, valid_group_sizes
from agentqat.strategy.resolve import ModuleConfig, module_role_name, pattern_matches
from agentqat.strategy.space import SearchSpace, pick

ATTEMPTS = 8
P_NARROW_LAYERS = 0.5
P_NARROW_ROLE = 1 / 3
MAX_BLOCK_CUTS = 3

Mutation = Callable[[dict, SearchSpace, np.random.Generator], dict]
Crossover = Callable[[dict, dict, SearchSpace, np.random.Generator], dict]
Change = Callable[[Layout, SearchSpace, np.random.Generator], "tuple[Layout, list[int]] | None"]
Eligible = Callable[[ModuleConfig, Collection[int], SearchSpace], bool]
LayerMask = Callable[[int, np.random.Generator], np.ndarray]
MUTATIONS: dict[str, Mutation] = {}
CROSSOVERS: dict[str, Crossover] = {}


def _parent_names(*documents: dict) -> str:
    return " x ".join(str(document.get("name", "unnamed")) for document in documents)


def _mutate(name: str, change: Change, document: dict, space: SearchSpace, rng: np.random.Generator) -> dict:
    """Returns the document changed by `change` in a region, repaired (see the module docstring)."""
    parent = layout_of(document, space.facts)
    fallback = None  # a child whose region changed, but not exactly as edited (the budget took some back)
    for _ in range(ATTEMPTS):
        proposal = change(parent, space, rng)
        if proposal is None:
            break
        edited, region = fix_layout(proposal[0], space.facts, space.choices), proposal[1]
        child = repair_layout(edited, space, rng, region)
        if all(child.configs[i] == edited.configs[i] for i in region) and edited != parent:
            fallback = child
            break
        if fallback is None and any(child.configs[i] != parent.configs[i] for i in region):
            fallback = child
    if fallback is None:
        return repair(document, space, rng)
    return document_of(fallback, space.facts, name, f"{name} of {_parent_names(document)}")


def register_mutation(name: str) -> Callable[[Change], Change]:
    """Returns a decorator that registers a layout change as the mutation `name`."""

    def decorate(change: Change) -> Change:
        if name in MUTATIONS:
            raise ValueError(f"mutation {name!r} registered twice")
        MUTATIONS[name] = partial(_mutate, name, change)
        return change

    return decorate


def _region(layout: Layout, space: SearchSpace, rng: np.random.Generator, eligible: Eligible) -> list[int] | None:
    """Returns the indices of a random region of one eligible config class, or None when no class is eligible."""
    linears = space.facts.linears
    classes = [
        indices for config, indices in layout.classes().items()
        if eligible(config, {linears[i].in_features for i in indices}, space)
    ]  # fmt: skip
    if not classes:
        return None
    region = pick(rng, classes)
    if rng.random() < P_NARROW_LAYERS:
        layers = sorted({linears[i].layer for i in region})
        start = int(rng.integers(len(layers)))
        kept = set(layers[start : int(rng.integers(start, len(layers))) + 1])
        region = [i for i in region if linears[i].layer in kept]
    if rng.random() < P_NARROW_ROLE:
        names = ("attn", "mlp", *sorted({module_role_name(linears[i]) for i in region}))
        pattern = pick(rng, [p for p in names if any(pattern_matches(p, linears[i]) for i in region)])
        region = [i for i in region if pattern_matches(pattern, linears[i])]
    return region


def _edit_region(
    layout: Layout, space: SearchSpace, rng: np.random.Generator, eligible: Eligible,
    edit: Callable[[ModuleConfig, list[int]], ModuleConfig],
) -> tuple[Layout, list[int]] | None:  # fmt: skip
    """Returns the layout with a random eligible region's config replaced by `edit(config, region)`, and the region."""
    region = _region(layout, space, rng, eligible)
    if region is None:
        return None
    edited = edit(layout.configs[region[0]], region)
    return layout.replaced(region, [edited] * len(region)), region


def _quantized(config: ModuleConfig) -> bool:
    return config.weight.bits != 16


@register_mutation("bit_shift")
def bit_shift(layout: Layout, space: SearchSpace, rng: np.random.Generator) -> tuple[Layout, list[int]] | None:
    """Returns the layout with a region's bits one step up or down over the allowed widths, and the region."""
    steps = sorted(space.choices.bits)

    def neighbours(bits: int) -> list[int]:
        lower, higher = [b for b in steps if b < bits], [b for b in steps if b > bits]
        return ([max(lower)] if lower else []) + ([min(higher)] if higher else [])

    def shift(config: ModuleConfig, region: list[int]) -> ModuleConfig:
        return replace(config, weight=replace(config.weight, bits=pick(rng, neighbours(config.weight.bits))))

    return _edit_region(layout, space, rng, lambda c, widths, s: bool(neighbours(c.weight.bits)), shift)


def _layer_indices(facts: ModelFacts) -> dict[int, list[int]]:
    """Returns each layer's module indices."""
    layers: dict[int, list[int]] = {}
    for index, info in enumerate(facts.linears):
        layers.setdefault(info.layer, []).append(index)
    return layers


@register_mutation("layer_reassign")
def layer_reassign(layout: Layout, space: SearchSpace, rng: np.random.Generator) -> tuple[Layout, list[int]] | None:
    """Returns the layout with a boundary between two layer spans moved, and the modules of the moved layers."""
    facts = space.facts
    layers = _layer_indices(facts)
    profile = {layer: tuple(layout.configs[i] for i in indices) for layer, indices in layers.items()}
    boundaries = [layer for layer in range(1, facts.num_layers) if profile[layer] != profile[layer - 1]]
    if not boundaries:
        return None
    position = int(rng.integers(len(boundaries)))
    boundary = boundaries[position]
    low = boundaries[position - 1] if position > 0 else 0
    high = boundaries[position + 1] if position + 1 < len(boundaries) else facts.num_layers
    target = pick(rng, [t for t in range(low, high + 1) if t != boundary])
    if target < boundary:  # the right span grows to the left
        moved, source = range(target, boundary), boundary
    else:
        moved, source = range(boundary, target), boundary - 1
    by_name = {module_role_name(facts.linears[i]): layout.configs[i] for i in layers[source]}
    region = [i for layer in moved for i in layers[layer]]  # whole layers: repair spares them as they now are
    configs = [by_name.get(module_role_name(facts.linears[i]), layout.configs[i]) for i in region]
    return layout.replaced(region, configs), region


@register_mutation("scale_swap")
def scale_swap(layout: Layout, space: SearchSpace, rng: np.random.Generator) -> tuple[Layout, list[int]] | None:
    """Returns the layout with a region's scales swapped between fp16 and pow2, and the region."""

    def eligible(config: ModuleConfig, widths: Collection[int], space: SearchSpace) -> bool:
        scales = set(format_method(config.weight.format).scales) & set(space.choices.scales)
        return _quantized(config) and len(scales) > 1

    def swap(config: ModuleConfig, region: list[int]) -> ModuleConfig:
        return replace(config, weight=replace(config.weight, scale="pow2" if config.weight.scale == "fp16" else "fp16"))

    return _edit_region(layout, space, rng, eligible, swap)


def _outlier_methods(config: ModuleConfig, space: SearchSpace) -> list[str]:
    """Returns the outlier methods a config can switch to."""
    reachable = [m for m in space.choices.outlier_methods if "fraction" not in outlier_scheme(m).fields or space.choices.kept_fractions]
    return [m for m in reachable if m != config.outliers.method]


@register_mutation("outlier_toggle")
def outlier_toggle(layout: Layout, space: SearchSpace, rng: np.random.Generator) -> tuple[Layout, list[int]] | None:
    """Returns the layout with a region's outlier policy switched to another method, and the region."""
    choices = space.choices

    def toggle(config: ModuleConfig, region: list[int]) -> ModuleConfig:
        method = pick(rng, _outlier_methods(config, space))
        outliers = replace(config.outliers, method=method, fraction=0.0)
        fields = outlier_scheme(method).fields
        if "fraction" in fields:  # keep_fp16's
            criterion = pick(rng, choices.outlier_criteria)
            outliers = replace(outliers, fraction=pick(rng, choices.kept_fractions), criterion=criterion)
        if "threshold" in fields:  # llm_int8's
            outliers = replace(outliers, threshold=pick(rng, choices.outlier_thresholds))
        return replace(config, outliers=outliers)

    return _edit_region(
        layout, space, rng, lambda c, widths, s: _quantized(c) and bool(_outlier_methods(c, s)), toggle
    )


@register_mutation("rounding_swap")
def rounding_swap(layout: Layout, space: SearchSpace, rng: np.random.Generator) -> tuple[Layout, list[int]] | None:
    """Returns the layout with a region's rounding changed to another of its format's, and the region."""

    def others(config: ModuleConfig) -> list[str]:
        weight = config.weight
        return [r for r in space.choices.roundings if r != weight.rounding and find(weight.format, r) is not None]

    def swap(config: ModuleConfig, region: list[int]) -> ModuleConfig:
        return replace(config, weight=replace(config.weight, rounding=pick(rng, others(config))))

    def eligible(config: ModuleConfig, widths: Collection[int], space: SearchSpace) -> bool:
        roundings = {r for r in space.choices.roundings if find(config.weight.format, r) is not None}
        return _quantized(config) and len(roundings) > 1

    return _edit_region(layout, space, rng, eligible, swap)


@register_mutation("group_size_change")
def group_size_change(layout: Layout, space: SearchSpace, rng: np.random.Generator) -> tuple[Layout, list[int]] | None:
    """Returns the layout with a region's group size changed to another valid for its modules, and the region."""
    linears = space.facts.linears

    def others(config: ModuleConfig, widths: Collection[int]) -> list[int]:
        sizes = valid_group_sizes(config.weight.format, widths, space.choices)
        return [g for g in sizes if g != config.weight.group_size]

    def change(config: ModuleConfig, region: list[int]) -> ModuleConfig:
        group = pick(rng, others(config, {linears[i].in_features for i in region}))
        return replace(config, weight=replace(config.weight, group_size=group))

    return _edit_region(layout, space, rng, lambda c, widths, s: _quantized(c) and bool(others(c, widths)), change)


def cross_layers(
    name: str, mask: LayerMask, first: dict, second: dict, space: SearchSpace, rng: np.random.Generator
) -> dict:
    """Returns the child taking each layer's configs from the parent `mask` picks, within budget (see docstring)."""
    facts = space.facts
    parents = (layout_of(first, facts), layout_of(second, facts))
    layers = _layer_indices(facts)
    cost = {
        (side, layer): sum(module_cost(parents[side].configs[i], facts.linears[i]) for i in indices)
        for side in (0, 1)
        for layer, indices in layers.items()
    }
    side = {layer: 0 if take_first else 1 for layer, take_first in zip(sorted(layers), mask(facts.num_layers, rng))}
    weights = sum(info.in_features * info.out_features for info in facts.linears)
    while sum(cost[side[layer], layer] for layer in layers) / weights > space.bits_budget:
        dearer = [layer for layer in sorted(layers) if cost[side[layer], layer] > cost[1 - side[layer], layer]]
        if not dearer:  # a parent itself is over budget: repair_layout below lowers bits
            break
        layer = pick(rng, dearer)
        side[layer] = 1 - side[layer]
    configs = [parents[side[info.layer]].configs[i] for i, info in enumerate(facts.linears)]
    child = repair_layout(Layout(tuple(configs), pick(rng, [p.compute_dtype for p in parents])), space, rng)
    return document_of(child, facts, name, f"{name} of {_parent_names(first, second)}")


def register_crossover(name: str) -> Callable[[LayerMask], LayerMask]:
    """Returns a decorator that registers a layer mask (True: first parent) as the crossover `name`."""

    def decorate(mask: LayerMask) -> LayerMask:
        if name in CROSSOVERS:
            raise ValueError(f"crossover {name!r} registered twice")
        CROSSOVERS[name] = partial(cross_layers, name, mask)
        return mask

    return decorate


@register_crossover("layerwise")
def layerwise(num_layers: int, rng: np.random.Generator) -> np.ndarray:
    """Returns a fair coin per layer: whether the child takes it from the first parent."""
    return rng.random(num_layers) < 0.5


@register_crossover("blockwise")
def blockwise(num_layers: int, rng: np.random.Generator) -> np.ndarray:
    """Returns contiguous blocks (1-3 random cuts) taken alternately from each parent, the first at random."""
    cut_count = int(rng.integers(1, min(MAX_BLOCK_CUTS, num_layers - 1) + 1)) if num_layers > 1 else 0
    starts = np.zeros(num_layers, dtype=np.int64)
    starts[rng.choice(np.arange(1, num_layers), cut_count, replace=False)] = 1
    return (np.cumsum(starts) + int(rng.integers(2))) % 2 == 0


def apply_random_operator(document: dict, space: SearchSpace, rng: np.random.Generator) -> dict:
    """Returns the document changed by a random mutation (the next in random order when one finds nothing to do)."""
    identity = strategy_id(document)
    for name in rng.permutation(sorted(MUTATIONS)):
        child = MUTATIONS[str(name)](document, space, rng)
        if strategy_id(child) != identity:
            return child
    return child
