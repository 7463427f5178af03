"""Resolves a Strategy against a concrete model: one complete, checked config per linear module.

Resolution layers the base default, the strategy's default and then each matching rule in order; every
field remembers the JSON path that set it, so an error names the rule to fix.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import get_args

from agentqat.models import LinearInfo, ModelFacts
from agentqat.quant.base import ActivationQuant, OutlierPolicy, WeightQuant
from agentqat.quant.registry import check_weight, format_method, method_of
from agentqat.quant.schemes import ACTIVATIONS, outlier_scheme, transforms_of
from agentqat.strategy.document import BASE_DEFAULT, Genes, GroupSize, Strategy, StrategyError

ROLE_PATTERNS = {"all": "*", "attn": "self_attn.*", "mlp": "mlp.*"}
GENE_TARGETS = {"weight": WeightQuant, "activation": ActivationQuant, "outliers": OutlierPolicy}
GROUP_SIZES = get_args(GroupSize)


@dataclass(frozen=True)
class ModuleConfig:
    """The complete quantization config of one linear module."""

    weight: WeightQuant
    activation: ActivationQuant
    outliers: OutlierPolicy


@dataclass(frozen=True)
class ResolvedStrategy:
    """A strategy resolved for one model: module name -> config, plus the compute dtype."""

    strategy: Strategy
    model: str
    modules: dict[str, ModuleConfig]
    compute_dtype: str


def parse_layers(spec: str, num_layers: int) -> tuple[int, ...]:
    """Returns the layer indices a selection like "all" or "0-3,7" names; raises ValueError when out of range."""
    if spec == "all":
        return tuple(range(num_layers))
    indices: list[int] = []
    for part in spec.split(","):
        first, _, last = part.partition("-")
        start, stop = int(first), int(last or first)
        if start > stop:
            raise ValueError(f"range {part!r} runs backwards; write it as {stop}-{start}")
        if stop >= num_layers:
            raise ValueError(f"layer {stop} does not exist; the model has layers 0-{num_layers - 1}")
        indices.extend(range(start, stop + 1))
    return tuple(sorted(set(indices)))


def module_role_name(info: LinearInfo) -> str:
    """Returns the module's name inside its decoder layer, e.g. "self_attn.q_proj"."""
    return info.name.split(f".layers.{info.layer}.", 1)[1]


def pattern_matches(pattern: str, info: LinearInfo) -> bool:
    """Returns whether a module pattern (role, full name in the layer, or last name part) selects `info`."""
    relative = module_role_name(info)
    pattern = ROLE_PATTERNS.get(pattern, pattern)
    target = relative if "." in pattern or pattern == "*" else relative.rsplit(".", 1)[-1]
    return fnmatch.fnmatchcase(target, pattern)


def _merge(values: dict, origins: dict, genes: Genes, path: str) -> None:
    for group in GENE_TARGETS:
        for key, value in getattr(genes, group).model_dump(exclude_none=True).items():
            values[group][key] = value
            origins[group][key] = f"{path}.{group}.{key}"


def _check_module(config: ModuleConfig, info: LinearInfo, origins: dict) -> list[str]:
    """Returns one line per impossible combination in a module's resolved config (module not named)."""
    problems, weight = [], config.weight
    where = lambda group, key: origins[group].get(key, "default")  # noqa: E731 - a tiny local formatter

    if weight.bits != 16:
        if weight.group_size and info.in_features % weight.group_size:
            divisors = [g for g in GROUP_SIZES if g and info.in_features % g == 0]
            problems.append(
                f"{where('weight', 'group_size')}: group_size {weight.group_size} does not divide the input width "
                f"{info.in_features}; use one of {divisors} or 0 (per channel)"
            )
        problems.extend(f"{where('weight', p.field)}: {p.message}" for p in check_weight(weight, info))
    activation = config.activation
    problems.extend(f"{where('activation', 'bits')}: {p}" for p in ACTIVATIONS.get(activation.format).problems(activation))
    problems.extend(f"{where('outliers', 'method')}: {p}" for p in outlier_scheme(config.outliers).problems(config.outliers))
    return problems


def _selections(strategy: Strategy, facts: ModelFacts) -> tuple[list[tuple[int, set[str]]], list[str]]:
    """Returns (rule index, names of the modules it selects) per rule with valid layers, and one line per problem."""
    problems: list[str] = []
    selections: list[tuple[int, set[str]]] = []
    for index, rule in enumerate(strategy.rules):
        path = f"rules[{index}]"
        try:
            layers = set(parse_layers(rule.layers, facts.num_layers))
        except ValueError as error:
            problems.append(f"{path}.layers: {error}")
            continue
        selected = set()
        for position, pattern in enumerate(rule.modules):
            matched = {i.name for i in facts.linears if i.layer in layers and pattern_matches(pattern, i)}
            if not matched:
                examples = sorted({module_role_name(i) for i in facts.linears})[:4]
                problems.append(
                    f"{path}.modules[{position}]: {pattern!r} matches no linear module in layers {rule.layers} of "
                    f"{facts.name}; use a role (attn, mlp, all), a name like {examples[0]} or a pattern like mlp.*"
                )
            selected |= matched
        selections.append((index, selected))
    return selections, problems


def _layered(strategy: Strategy, selections: list[tuple[int, set[str]]], info: LinearInfo) -> tuple[ModuleConfig, dict]:
    """Returns the module's config (base default, default, matching rules in order) and each field's JSON path."""
    values = {group: {} for group in GENE_TARGETS}
    origins = {group: {} for group in GENE_TARGETS}
    _merge(values, origins, BASE_DEFAULT, "base")
    origins = {group: {} for group in GENE_TARGETS}
    _merge(values, origins, strategy.default, "default")
    for index, selected in selections:
        if info.name in selected:
            _merge(values, origins, strategy.rules[index], f"rules[{index}]")
    if strategy.arithmetic.shift_scales:
        values["weight"]["scale"] = "pow2" if "pow2" in format_method(values["weight"]["format"]).scales else "fp16"
    return ModuleConfig(**{group: GENE_TARGETS[group](**values[group]) for group in GENE_TARGETS}), origins


def layered_configs(strategy: Strategy, facts: ModelFacts) -> dict[str, ModuleConfig]:
    """Returns every module's config as the strategy layers it, unchecked: rules with bad layers are skipped.

    What `resolve_strategy` would check is left in place, for callers that repair strategies.
    """
    selections, _ = _selections(strategy, facts)
    return {info.name: _layered(strategy, selections, info)[0] for info in facts.linears}


def resolve_strategy(strategy: Strategy, facts: ModelFacts) -> ResolvedStrategy:
    """Returns the strategy resolved for the model, or raises StrategyError listing every problem."""
    selections, problems = _selections(strategy, facts)
    modules: dict[str, ModuleConfig] = {}
    module_problems: dict[str, list[str]] = {}
    for info in facts.linears:
        config, origins = _layered(strategy, selections, info)
        for problem in _check_module(config, info, origins):
            module_problems.setdefault(problem, []).append(info.name)
        modules[info.name] = config
    for problem, names in module_problems.items():
        where = f"module {names[0]}" if len(names) == 1 else f"{len(names)} modules, e.g. {names[0]}"
        problems.append(f"{problem} ({where})")
    if problems:
        raise StrategyError(strategy.name, problems)
    return ResolvedStrategy(strategy, facts.name, modules, strategy.arithmetic.compute_dtype)


def module_needs_calibration(config: ModuleConfig) -> bool:
    """Returns whether a (valid) module config reads calibration statistics."""
    return (
        config.weight.bits != 16 and method_of(config.weight).needs_calibration
        or bool(transforms_of(config.activation))
        or outlier_scheme(config.outliers).needs_calibration(config.outliers)
    )


def needs_calibration(resolved: ResolvedStrategy) -> bool:
    """Returns whether any module's config reads calibration statistics."""
    return any(module_needs_calibration(c) for c in resolved.modules.values())
