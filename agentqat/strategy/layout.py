"""A strategy expanded for one model (one config per linear module) and compiled back into a compact document.

Generators and operators work on layouts, where "change the bits of layers 3-7's MLP" is a plain replacement,
instead of on rules whose fields override each other. Compilation (`document_of`) writes:

    default    the most common config (among those without SmoothQuant when any has none: a rule cannot unset
               smooth_alpha), with every field
    rules      per other config, one rule per set of modules it covers in a layer: `layers` lists the layers
               sharing that set ("0-3,7"), `modules` names it by role where a role fits exactly (all, attn,
               mlp) and by name otherwise; a rule writes only the fields that differ from the default. Where
               it gives fewer rules (module-level allocations, whose sets differ from layer to layer), one rule
               per config and layer set instead, naming the modules that have that config in exactly those
               layers (fused sets at one level share a rule)

Rules never overlap, so their order does not matter. `arithmetic.shift_scales` is compiled away: the power-of-two
scales it forces are written into the configs.
"""

from __future__ import annotations

import copy
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from functools import lru_cache

from agentqat.models import LinearInfo, ModelFacts
from agentqat.quant.schemes import transforms_of
from agentqat.strategy.bits import expected_outlier_count, module_bits
from agentqat.strategy.document import SCHEMA_VERSION, StrategyError, parse_strategy, strategy_id
from agentqat.strategy.resolve import ROLE_PATTERNS, ModuleConfig, layered_configs, module_role_name, pattern_matches

# The modules a serving engine computes as one matrix (q/k/v; gate/up): units that switch, repair and the deployment
# targets keep at one config.
FUSED_SETS = (("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"), ("mlp.gate_proj", "mlp.up_proj"))

MAX_MODULE_PATTERNS = 8  # what the schema allows per rule


@dataclass(frozen=True)
class Layout:
    """A strategy for one model: one config per linear module (in `facts.linears` order) and the compute dtype."""

    configs: tuple[ModuleConfig, ...]
    compute_dtype: str

    def replaced(self, indices: Iterable[int], configs: Sequence[ModuleConfig]) -> Layout:
        """Returns the layout with the modules at `indices` given `configs` (one each, in order)."""
        new = list(self.configs)
        for index, config in zip(indices, configs, strict=True):
            new[index] = config
        return Layout(tuple(new), self.compute_dtype)

    def classes(self, indices: Iterable[int] | None = None) -> dict[ModuleConfig, list[int]]:
        """Returns each config (in order of first use) with the indices of the modules using it."""
        grouped: dict[ModuleConfig, list[int]] = {}
        for index in range(len(self.configs)) if indices is None else indices:
            grouped.setdefault(self.configs[index], []).append(index)
        return grouped


def layout_of(document: dict, facts: ModelFacts) -> Layout:
    """Returns the layout of a schema-valid document (configs as layered, unchecked; rules with bad layers skipped)."""
    strategy = parse_strategy(document)
    configs = layered_configs(strategy, facts)
    return Layout(tuple(configs[info.name] for info in facts.linears), strategy.arithmetic.compute_dtype)


@lru_cache(maxsize=1 << 16)
def module_cost(config: ModuleConfig, info: LinearInfo) -> int:
    """Returns the storage bits of one module under `config` (expected outliers, as the budget counts them)."""
    return module_bits(config, info, expected_outlier_count(config.outliers, info, None)).total


def layout_bits(layout: Layout, facts: ModelFacts) -> float:
    """Returns the effective bits per weight of a layout (what `strategy_bits` reports for its document)."""
    total = sum(module_cost(config, info) for config, info in zip(layout.configs, facts.linears, strict=True))
    return total / sum(info.in_features * info.out_features for info in facts.linears)


def layer_spec(layers: Iterable[int]) -> str:
    """Returns a layer selection naming exactly `layers`, e.g. "0-3,7"."""
    runs: list[list[int]] = []
    for layer in sorted(set(layers)):
        if runs and layer == runs[-1][1] + 1:
            runs[-1][1] = layer
        else:
            runs.append([layer, layer])
    return ",".join(str(first) if first == last else f"{first}-{last}" for first, last in runs)


def _genes(config: ModuleConfig) -> dict:
    """Returns the config as the three gene groups of a document (an unset smooth_alpha left out)."""
    genes = {group: asdict(getattr(config, group)) for group in ("weight", "activation", "outliers")}
    genes["activation"] = {key: value for key, value in genes["activation"].items() if value is not None}
    return genes


def _difference(config: ModuleConfig, default: ModuleConfig) -> dict:
    """Returns the gene fields where `config` differs from `default`, grouped as in a document."""
    ours, theirs = _genes(config), _genes(default)
    changed = {group: {k: v for k, v in values.items() if theirs[group].get(k) != v} for group, values in ours.items()}
    return {group: values for group, values in changed.items() if values}


@lru_cache(maxsize=8)
def _role_members(facts: ModelFacts) -> dict[int, dict[str, frozenset[str]]]:
    """Returns, per layer, the names of the modules each role (all, attn, mlp) selects there."""
    members: dict[int, dict[str, set[str]]] = {}
    for info in facts.linears:
        for role in ROLE_PATTERNS:
            if pattern_matches(role, info):
                members.setdefault(info.layer, {}).setdefault(role, set()).add(module_role_name(info))
    return {layer: {role: frozenset(names) for role, names in roles.items()} for layer, roles in members.items()}


def _module_patterns(names: frozenset[str], layers: Sequence[int], facts: ModelFacts) -> list[str]:
    """Returns patterns selecting exactly the modules called `names` in each of `layers`: roles where they fit."""
    members = _role_members(facts)
    patterns, left = [], set(names)
    for role in ROLE_PATTERNS:  # all, attn, mlp
        covered = frozenset().union(*(members[layer].get(role, frozenset()) for layer in layers))
        if covered and covered <= left:
            patterns.append(role)
            left -= covered
    return patterns + sorted(left)


def _rules_for(config: ModuleConfig, default: ModuleConfig, indices: list[int], facts: ModelFacts) -> list[dict]:
    """Returns the rules that give the modules at `indices` (and only them) `config` over `default`."""
    names_by_layer: dict[int, set[str]] = {}
    for index in indices:
        info = facts.linears[index]
        names_by_layer.setdefault(info.layer, set()).add(module_role_name(info))
    layers_by_names: dict[frozenset[str], list[int]] = {}
    for layer, names in names_by_layer.items():
        layers_by_names.setdefault(frozenset(names), []).append(layer)
    genes = _difference(config, default)
    rules = []
    for names, layers in layers_by_names.items():
        patterns = _module_patterns(names, layers, facts)
        for start in range(0, len(patterns), MAX_MODULE_PATTERNS):
            modules = patterns[start : start + MAX_MODULE_PATTERNS]
            rules.append({"layers": layer_spec(layers), "modules": modules, **copy.deepcopy(genes)})
    return rules


def _default_config(layout: Layout) -> ModuleConfig:
    """Returns the config the default should hold: the most common one a rule can override everywhere."""
    counts = Counter(layout.configs)
    unsmoothed = [c for c in counts if not transforms_of(c.activation)]
    return max(unsmoothed or counts, key=counts.__getitem__)  # max keeps the first of equals: first use


def _rules_by_module(config: ModuleConfig, default: ModuleConfig, indices: list[int], facts: ModelFacts) -> list[dict]:
    """Returns rules giving the modules at `indices` `config`: one per set of layers, naming every module that
    has `config` in exactly those layers."""
    layers_by_name: dict[str, set[int]] = {}
    for index in indices:
        info = facts.linears[index]
        layers_by_name.setdefault(module_role_name(info), set()).add(info.layer)
    names_by_layers: dict[str, list[str]] = {}
    for name, layers in layers_by_name.items():
        names_by_layers.setdefault(layer_spec(layers), []).append(name)
    genes = _difference(config, default)
    return [
        {"layers": spec, "modules": names[start : start + MAX_MODULE_PATTERNS], **copy.deepcopy(genes)}
        for spec, names in names_by_layers.items()
        for start in range(0, len(names), MAX_MODULE_PATTERNS)
    ]


def compile_rules(layout: Layout, facts: ModelFacts) -> tuple[ModuleConfig, list[dict]]:
    """Returns the default config and the rules of the layout's document (see the module docstring)."""
    default = _default_config(layout)
    by_set, by_module = [], []
    for config, indices in layout.classes().items():
        if config != default:
            by_set.extend(_rules_for(config, default, indices, facts))
            by_module.extend(_rules_by_module(config, default, indices, facts))
    return default, by_set if len(by_set) <= len(by_module) else by_module


def document_of(layout: Layout, facts: ModelFacts, prefix: str, notes: str = "") -> dict:
    """Returns the layout as a strategy document named "<prefix>-<strategy id>"."""
    default, rules = compile_rules(layout, facts)
    body = {"default": _genes(default), "rules": rules, "arithmetic": {"compute_dtype": layout.compute_dtype}}
    name = f"{prefix}-{strategy_id({'schema_version': SCHEMA_VERSION, **body})}"
    return {"schema_version": SCHEMA_VERSION, "name": name, **({"notes": notes[:500]} if notes else {}), **body}


def layout_id(document: dict, facts: ModelFacts) -> str:
    """Returns the id of what the document does to this model: two documents whose rules give every module
    the same config share it (unlike `strategy_id`, which hashes the document). Invalid ones: `strategy_id`."""
    try:
        return strategy_id(document_of(layout_of(document, facts), facts, "layout"))
    except StrategyError:
        return strategy_id(document)
