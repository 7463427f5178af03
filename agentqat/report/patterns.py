"""Survival patterns: across every strategy a comparison played, which genes, layers and combinations go with
surviving the first stage and with a low KL there.

Each strategy is resolved against the model (every linear module's config) and described by binary features
(FEATURES: majority rounding method, symmetric grids, per-channel scales, activation quantization, kept
outliers, early or late layers or MLPs at more bits than the rest, ...). For each feature, the contrast
between strategies with and without it: the difference in survival rate and in median log KL (survivors),
each with a seeded bootstrap 95% interval. A contrast whose interval excludes 0 against the direction common
practice expects (EXPECTED) is called out. Contrasts are associations across whatever the arms proposed, not
controlled experiments.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from agentqat.models import ModelFacts
from agentqat.quant.schemes import keeps_outliers
from agentqat.strategy.document import StrategyError, parse_strategy
from agentqat.strategy.resolve import ModuleConfig, layered_configs

RESAMPLES = 2_000
MIN_GROUP = 3  # a contrast needs this many strategies on each side

Modules = dict[str, ModuleConfig]


def _weighted(configs: Modules, facts: ModelFacts, keep: Callable) -> float:
    """Returns the share of weights in modules where `keep(name, layer, config)` holds."""
    sizes = {info.name: (info.layer, info.in_features * info.out_features) for info in facts.linears}
    total = sum(size for _, size in sizes.values())
    return sum(size for name, (layer, size) in sizes.items() if keep(name, layer, configs[name])) / total


def _mean_bits(configs: Modules, facts: ModelFacts, select: Callable) -> float:
    chosen = [(configs[info.name].weight.bits, info.in_features * info.out_features) for info in facts.linears if select(info)]
    return sum(bits * size for bits, size in chosen) / max(1, sum(size for _, size in chosen))


def _third(facts: ModelFacts, which: int) -> Callable:
    bounds = np.array_split(np.arange(facts.num_layers), 3)[which]
    return lambda info: info.layer in set(bounds.tolist())


FEATURES: dict[str, Callable[[Modules, ModelFacts], bool]] = {
    "GPTQ on most weights": lambda c, f: _weighted(c, f, lambda n, l, m: m.weight.rounding == "gptq") > 0.5,
    "AWQ on most weights": lambda c, f: _weighted(c, f, lambda n, l, m: m.weight.rounding == "awq") > 0.5,
    "plain RTN on most weights": lambda c, f: _weighted(c, f, lambda n, l, m: m.weight.rounding == "rtn") > 0.5,
    "symmetric grids on most weights": lambda c, f: _weighted(c, f, lambda n, l, m: m.weight.symmetric) > 0.5,
    "per-channel scales on most weights": lambda c, f: _weighted(c, f, lambda n, l, m: m.weight.group_size == 0) > 0.5,
    "any weight at 3 bits or fewer": lambda c, f: _weighted(c, f, lambda n, l, m: m.weight.bits <= 3) > 0,
    "activations quantized somewhere": lambda c, f: _weighted(c, f, lambda n, l, m: m.activation.bits < 16) > 0,
    "outliers kept somewhere": lambda c, f: _weighted(c, f, lambda n, l, m: keeps_outliers(m.outliers)) > 0,
    "first third of layers at more bits": lambda c, f: _mean_bits(c, f, _third(f, 0)) > _mean_bits(c, f, lambda i: True) + 0.25,
    "last third of layers at more bits": lambda c, f: _mean_bits(c, f, _third(f, 2)) > _mean_bits(c, f, lambda i: True) + 0.25,
    "MLPs at more bits than attention": lambda c, f: _mean_bits(c, f, lambda i: ".mlp." in i.name) > _mean_bits(c, f, lambda i: ".self_attn." in i.name) + 0.25,
}

# The sign common practice expects of each feature's effect on log KL (-1: lower KL, +1: higher KL).
EXPECTED = {
    "GPTQ on most weights": -1,
    "AWQ on most weights": -1,
    "plain RTN on most weights": +1,
    "symmetric grids on most weights": +1,
    "per-channel scales on most weights": +1,
    "any weight at 3 bits or fewer": +1,
    "activations quantized somewhere": +1,
    "outliers kept somewhere": -1,
    "first third of layers at more bits": -1,
}


@dataclass(frozen=True)
class Contrast:
    """One feature: strategies with and without it, their survival rates and median log KL (survivors), and
    the differences (with - without) with bootstrap 95% intervals."""

    feature: str
    n_with: int
    n_without: int
    survival_with: float
    survival_without: float
    survival_diff: tuple[float, float, float]  # value, low, high
    log_kl_diff: tuple[float, float, float] | None
    contradicts: bool  # the log KL interval excludes 0 on the side opposite to EXPECTED


@dataclass(frozen=True)
class Played:
    """One strategy's first-stage fate: survived (ok and within budget) and its KL when it was measured."""

    document: dict
    survived: bool
    kl: float


def features_of(document: dict, facts: ModelFacts) -> dict[str, bool] | None:
    """Returns the strategy's FEATURES, None when it does not parse or resolve."""
    try:
        configs = layered_configs(parse_strategy(document), facts)
        return {name: bool(test(configs, facts)) for name, test in FEATURES.items()}
    except (StrategyError, ValueError, KeyError):
        return None


def _diff_interval(with_values: np.ndarray, without_values: np.ndarray, statistic, rng: np.random.Generator) -> tuple[float, float, float]:
    value = statistic(with_values) - statistic(without_values)
    draws = [
        statistic(rng.choice(with_values, len(with_values))) - statistic(rng.choice(without_values, len(without_values)))
        for _ in range(RESAMPLES)
    ]
    low, high = np.percentile(draws, [2.5, 97.5])
    return float(value), float(low), float(high)


def contrasts(played: list[Played], facts: ModelFacts, seed: int = 0) -> list[Contrast]:
    """Returns the contrast of every feature that at least MIN_GROUP strategies have and MIN_GROUP lack."""
    rng = np.random.default_rng(seed)
    described = [(features_of(p.document, facts), p) for p in played]
    described = [(features, p) for features, p in described if features is not None]
    out = []
    for feature in FEATURES:
        groups = [[p for features, p in described if features[feature] == side] for side in (True, False)]
        if min(len(group) for group in groups) < MIN_GROUP:
            continue
        survived = [np.array([p.survived for p in group], float) for group in groups]
        log_kl = [np.array([math.log(max(p.kl, 1e-9)) for p in group if p.survived and math.isfinite(p.kl)]) for group in groups]
        kl_diff = _diff_interval(*log_kl, np.median, rng) if min(len(v) for v in log_kl) >= MIN_GROUP else None
        expected = EXPECTED.get(feature)
        contradicts = bool(kl_diff and expected and (kl_diff[1] > 0 if expected < 0 else kl_diff[2] < 0))
        out.append(Contrast(
            feature=feature, n_with=len(groups[0]), n_without=len(groups[1]), survival_with=float(survived[0].mean()),
            survival_without=float(survived[1].mean()), survival_diff=_diff_interval(*survived, np.mean, rng),
            log_kl_diff=kl_diff, contradicts=contradicts,
        ))  # fmt: skip
    return out
