"""Carrying a strategy found on one model to another (`agentqat transfer`).

A strategy names decoder layers by index, so a winner found on a 30-layer model cannot be applied as it is to a
model with another depth. Transfer maps it by relative depth: each target layer takes the configs of the source
layer at the same depth (the one whose span holds the target layer's centre), module role by module role
("self_attn.q_proj", "mlp.down_proj", ...). A role the source model lacks takes the source layer's most common
config. Configs the target's shapes do not allow (a group size that does not divide an input width) are repaired
as generators repair theirs (`generators.repair.fix_config`), and counted. The effective bits change with the
target's shapes; both are reported.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from agentqat.models import ModelFacts
from agentqat.strategy.document import parse_strategy
from agentqat.strategy.layout import Layout, document_of, layout_bits
from agentqat.strategy.repair import fix_config
from agentqat.strategy.resolve import ModuleConfig, module_role_name, resolve_strategy
from agentqat.strategy.space import GeneChoices


def source_layer(target_layer: int, target_layers: int, source_layers: int) -> int:
    """Returns the source layer at the target layer's relative depth (first to first, last to last)."""
    return min(source_layers - 1, int((target_layer + 0.5) * source_layers / target_layers))


@dataclass(frozen=True)
class Transferred:
    """A strategy carried to another model: its document there, its effective bits on both models, how many
    target modules needed a repaired config, and the target roles the source model lacks."""

    document: dict
    source_bits: float
    target_bits: float
    repaired: int
    missing_roles: tuple[str, ...]


def transfer(document: dict, source: ModelFacts, target: ModelFacts, choices: GeneChoices | None = None) -> Transferred:
    """Returns the strategy `document` (valid on `source`; StrategyError otherwise) carried to `target`."""
    choices = choices or GeneChoices()
    strategy = parse_strategy(document)
    resolved = resolve_strategy(strategy, source)
    by_place = {(info.layer, module_role_name(info)): resolved.modules[info.name] for info in source.linears}
    configs: list[ModuleConfig] = []
    repaired, missing = 0, set()
    for info in target.linears:
        layer, role = source_layer(info.layer, target.num_layers, source.num_layers), module_role_name(info)
        config = by_place.get((layer, role))
        if config is None:
            missing.add(role)
            config = Counter(c for (l, _), c in by_place.items() if l == layer).most_common(1)[0][0]
        fixed = fix_config(config, info.in_features, choices)
        repaired += fixed != config
        configs.append(fixed)
    layout = Layout(tuple(configs), strategy.arithmetic.compute_dtype)
    source_layout = Layout(tuple(resolved.modules[info.name] for info in source.linears), strategy.arithmetic.compute_dtype)
    notes = (f"{strategy.name} carried from {source.name} ({source.num_layers} layers) to {target.name} "
             f"({target.num_layers} layers) by relative depth")  # fmt: skip
    return Transferred(
        document_of(layout, target, "transfer", notes), layout_bits(source_layout, source), layout_bits(layout, target),
        repaired, tuple(sorted(missing)),
    )  # fmt: skip
