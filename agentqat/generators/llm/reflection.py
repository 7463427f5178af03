"""Reflection: rule-based lessons from failures and rejected replies, fed into the next prompts.

A 135M proposer cannot write useful reflections, so the code writes them from counts:

- a strategy's features, from its layout: "<bits>-bit <role> in layers <span>" for each width a role (attn, mlp)
  uses in a third of the layers, and "<format> weights", "<rounding> rounding", "pow2 scales",
  "<method> outliers", "<bits>-bit activations", "SmoothQuant", "<dtype> compute";
- its fate: ok, a failed outcome (collapse, nan, overflow, error, timeout, invalid), or "over budget" (ok but
  not surviving);
- a lesson, e.g. "3 of 8 strategies with 2-bit mlp in layers 20-29 collapsed": a feature whose strategies failed
  the same way at least twice and at least half the time. Lessons failing on the same strategies are
  deduplicated (the most specific kept); rejected replies are grouped by their reason with digits masked.

Short-term: the strategies of the last `observe` call (each strategy counts once, when first seen), as a summary
line, its lessons and its most common rejection. Long-term: lessons over everything observed, strongest first,
then the most common rejections, capped.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from agentqat.generators.base import Evaluated
from agentqat.models import ModelFacts
from agentqat.quant.schemes import keeps_outliers, transforms_of
from agentqat.strategy.document import StrategyError, strategy_id
from agentqat.strategy.layout import layout_of
from agentqat.strategy.resolve import pattern_matches

FAILED = {
    "collapse": "collapsed", "nan": "gave NaN", "overflow": "overflowed fp16", "error": "raised an error",
    "timeout": "timed out", "invalid": "were invalid", "over budget": "went over budget",
}  # fmt: skip
MIN_FAILURES = 2
MIN_FAILURE_RATE = 0.5
SHORT_LESSONS = 2
LONG_LESSONS = 6
LONG_REJECTIONS = 2


def fate(member: Evaluated) -> str:
    """Returns "ok", the failed outcome, or "over budget" (a match that ran but does not survive)."""
    if member.outcome != "ok":
        return member.outcome
    return "ok" if member.survives else "over budget"


def _thirds(num_layers: int) -> dict[int, str]:
    """Returns each layer's third of the model as a span, e.g. 23 -> "20-29"."""
    spans = {}
    for part in np.array_split(np.arange(num_layers), min(3, num_layers)):
        first, last = int(part[0]), int(part[-1])
        spans.update({int(layer): str(first) if first == last else f"{first}-{last}" for layer in part})
    return spans


def features(document: dict, facts: ModelFacts) -> frozenset[str]:
    """Returns the features a lesson can name (see the module docstring); none for a document off the schema."""
    try:
        layout = layout_of(document, facts)
    except StrategyError:
        return frozenset()
    thirds, found = _thirds(facts.num_layers), set()
    for config, info in zip(layout.configs, facts.linears, strict=True):
        weight, role = config.weight, "attn" if pattern_matches("attn", info) else "mlp"
        found.add(f"{weight.bits}-bit {role} in layers {thirds[info.layer]}")
        if weight.bits != 16:
            found.add(f"{weight.format} weights" if weight.format != "int" else f"{weight.rounding} rounding")
            found.update(["pow2 scales"] if weight.scale == "pow2" else [])
        found.update([f"{config.outliers.method} outliers"] if keeps_outliers(config.outliers) else [])
        found.update([f"{config.activation.bits}-bit activations"] if config.activation.bits != 16 else [])
        found.update(t.label for t in transforms_of(config.activation))
    found.update([f"{layout.compute_dtype} compute"] if layout.compute_dtype != "fp32" else [])
    return frozenset(found)


@dataclass
class Tally:
    """Which strategies had each feature, and which of them failed each way."""

    having: dict[str, set[str]] = field(default_factory=dict)
    failing: dict[tuple[str, str], set[str]] = field(default_factory=dict)

    def add(self, identity: str, found: frozenset[str], how: str) -> None:
        """Counts one strategy with its features and fate."""
        for feature in found:
            self.having.setdefault(feature, set()).add(identity)
            if how != "ok":
                self.failing.setdefault((feature, how), set()).add(identity)

    def lessons(self, limit: int) -> list[str]:
        """Returns up to `limit` lessons: strongest first, one per distinct set of failing strategies."""
        candidates = []
        for (feature, how), failed in self.failing.items():
            total = len(self.having[feature])
            if len(failed) >= MIN_FAILURES and len(failed) >= MIN_FAILURE_RATE * total:
                candidates.append((-len(failed), -len(failed) / total, total, feature, how, failed))
        lessons, covered = [], set()
        for failed_count, _, total, feature, how, failed in sorted(candidates, key=lambda c: c[:5]):
            key = (how, frozenset(failed))
            if key not in covered and len(lessons) < limit:
                covered.add(key)
                lessons.append(f"{-failed_count} of {total} strategies with {feature} {FAILED.get(how, how)}")
        return lessons


def _rejection_lines(reasons: Counter[str], examples: dict[str, str], limit: int) -> list[str]:
    return [
        f"{count} {'reply' if count == 1 else 'replies'} rejected like: {examples[key]}"
        for key, count in reasons.most_common(limit)
    ]


class Reflection:
    """Accumulates lessons from evaluated strategies and rejected replies (see the module docstring)."""

    def __init__(self, facts: ModelFacts):
        self.facts = facts
        self._seen: set[str] = set()
        self._tally = Tally()
        self._reasons: Counter[str] = Counter()
        self._examples: dict[str, str] = {}
        self.short_term: list[str] = []

    def observe(self, evaluated: Sequence[Evaluated], rejections: Sequence[str]) -> None:
        """Takes in a generation: evaluated strategies (those seen before are skipped) and rejection reasons."""
        batch, fates = Tally(), Counter()
        for member in evaluated:
            identity = strategy_id(member.document)
            if identity in self._seen:
                continue
            self._seen.add(identity)
            found, how = features(member.document, self.facts), fate(member)
            fates[how] += 1
            batch.add(identity, found, how)
            self._tally.add(identity, found, how)
        reasons: Counter[str] = Counter()
        for reason in rejections:
            key = re.sub(r"\d+", "#", reason)
            reasons[key] += 1
            self._examples.setdefault(key, reason)
        self._reasons.update(reasons)
        failures = ", ".join(f"{count} {how}" for how, count in fates.most_common() if how != "ok")
        summary = f"last generation: {sum(fates.values())} new strategies, {fates['ok']} survived"
        summary += f" ({failures})" if failures else ""
        summary += f"; {len(rejections)} replies rejected" if rejections else ""
        self.short_term = [summary, *batch.lessons(SHORT_LESSONS), *_rejection_lines(reasons, self._examples, 1)]

    @property
    def long_term(self) -> list[str]:
        """Returns the accumulated lessons: strongest failure patterns, then the most common rejections."""
        return self._tally.lessons(LONG_LESSONS) + _rejection_lines(self._reasons, self._examples, LONG_REJECTIONS)
