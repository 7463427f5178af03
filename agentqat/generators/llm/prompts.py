"""Renders the LLM generator's prompts from the versioned templates in the top-level `prompts/` (jinja2; the wheel
carries them as package data, agentqat/generators/llm/templates/).

Every prompt carries a `Context`: the model in a few lines, the bit budget, per-layer sensitivities, the elite
with their scores and the reflections. The proposer is a small model with a 2048-token context, so every
description here is compact (a strategy is one line, e.g. "4b g64 asym gptq; 0-3 down_proj: 8b").

From v2 on, a prompt's example reply is drawn at random from the request's schema (`example`, seeded by the
request's seed), so the example carries no known-good answer. The v1 templates (fixed examples: uniform GPTQ W4
g64 with early MLP layers at 5 bits) stay readable for runs recorded with them.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import jinja2
import numpy as np

from agentqat import edited_files
from agentqat.generators.base import Evaluated
from agentqat.generators.llm.schema_sampler import sample_instance
from agentqat.models import ModelFacts
from agentqat.quant.schemes import OUTLIER_SCHEMES, outlier_scheme
from agentqat.strategy.document import BASE_DEFAULT, MAX_RULES, StrategyError, parse_strategy, strategy_id
from agentqat.strategy.resolve import module_role_name, pattern_matches

TEMPLATES = edited_files("prompts", "agentqat.generators.llm", "templates")
VERSION = "v2"
EXAMPLE_STREAM = 1  # the example's random stream beside the request seed (a random backend draws on the seed alone)
MAX_EXAMPLE_CHARS = 240  # ~80 tokens: the longest prompt and its reply stay inside the proposer's 2048-token context
EXAMPLE_DRAWS = 20
KINDS = ("propose", "mutate", "recombine")
MOST_SENSITIVE = 3
ELITE_RULES_SHOWN = 2  # rules shown per elite strategy
PARENT_RULES_SHOWN = 5  # rules shown per parent
ALWAYS_SHOWN = ("bits", "group_size", "symmetric", "rounding")  # of the default's weight gene


def _template_text(name: str) -> str | None:
    """Returns the text of the template file `name` (None when there is none)."""
    path = TEMPLATES / name
    return path.read_text(encoding="utf-8") if path.is_file() else None


_environment = jinja2.Environment(
    loader=jinja2.FunctionLoader(_template_text),
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
    keep_trailing_newline=False,
    autoescape=False,
)


@dataclass(frozen=True)
class Context:
    """What every prompt carries: descriptions, the elite (best first) and the lessons."""

    model: str
    budget: float
    sensitivities: str
    elite: tuple[Evaluated, ...]
    lessons: tuple[str, ...]


def template_name(kind: str, version: str = VERSION) -> str:
    """Returns the file name of a request kind's template, e.g. "mutate.v1.md"."""
    if kind not in KINDS:
        raise ValueError(f"unknown request kind {kind!r}; one of {', '.join(KINDS)}")
    return f"{kind}.{version}.md"


def render(kind: str, context: Context, parents: Sequence[dict] = (), version: str = VERSION, example: str = "") -> str:
    """Returns the prompt of a request kind: its template rendered with the context, the parent strategies and
    (from v2) the example reply.

    The elite is listed without the parents, which the prompt shows in full."""
    template = _environment.get_template(template_name(kind, version))
    parent_ids = {strategy_id(parent) for parent in parents}
    elite = [describe_member(m) for m in context.elite if strategy_id(m.document) not in parent_ids]
    lines = [describe_strategy(parent, PARENT_RULES_SHOWN) for parent in parents]
    return template.render(context=context, elite=elite, parents=lines, example=example).strip() + "\n"


def example(schema: dict, seed: int, accept: Callable[[str], bool] = lambda text: True) -> str:
    """Returns an example reply for a request, as compact JSON: the first of up to EXAMPLE_DRAWS random instances
    of its schema (drawn from the request's seed, stream EXAMPLE_STREAM) that is at most MAX_EXAMPLE_CHARS long
    and that `accept` takes (e.g. an edit that applies to the parent), else the last short one drawn."""
    rng = np.random.default_rng([seed, EXAMPLE_STREAM])
    fallback = None
    for _ in range(EXAMPLE_DRAWS):
        text = json.dumps(sample_instance(schema, rng), separators=(", ", ": "))
        if len(text) > MAX_EXAMPLE_CHARS:
            continue
        if accept(text):
            return text
        fallback = text
    return fallback or text


def describe_model(facts: ModelFacts, group_sizes: Sequence[int]) -> str:
    """Returns the model's layers, its module shapes by role and the group sizes that fit every module."""
    shapes: dict[str, dict[str, list[str]]] = {}  # role -> shape -> module names
    for info in facts.linears:
        role = next((r for r in ("attn", "mlp") if pattern_matches(r, info)), "other")
        name = module_role_name(info).rsplit(".", 1)[-1]
        names = shapes.setdefault(role, {}).setdefault(f"{info.in_features}x{info.out_features}", [])
        names.extend([name] if name not in names else [])
    per_layer = len(facts.linears) // max(facts.num_layers, 1)
    lines = [f"{facts.name}: {facts.num_layers} layers (0-{facts.num_layers - 1}), {per_layer} linear modules each "
             "(input x output width):"]  # fmt: skip
    for role, by_shape in shapes.items():
        lines.append(f"{role}: " + "; ".join(f"{', '.join(names)} {shape}" for shape, names in by_shape.items()))
    lines.append(f"group sizes: {', '.join(map(str, group_sizes))} (0 = one scale per output channel)")
    return "\n".join(lines)


def describe_sensitivities(sensitivities: Mapping[int, float] | None, num_layers: int) -> str:
    """Returns each layer's sensitivity as a digit 0-9 (scaled to the largest; "-" unmeasured), or "not measured"."""
    if not sensitivities:
        return "not measured"
    largest = max(sensitivities.values())
    digits = "".join(
        str(round(9 * sensitivities[layer] / largest)) if layer in sensitivities and largest > 0 else "-"
        for layer in range(num_layers)
    )
    groups = " ".join(digits[start : start + 10] for start in range(0, num_layers, 10))
    top = sorted(sensitivities, key=lambda layer: (-sensitivities[layer], layer))[:MOST_SENSITIVE]
    return (
        f"KL when one layer alone is low-bit, 0-9 per layer from layer 0 (9 = KL {largest:.2g}): {groups}; "
        f"most sensitive: {', '.join(map(str, top))}"
    )


def _fields(group: str, values: dict) -> list[str]:
    """Returns one gene group's set fields as short words: 4b, g64, sym, gptq, A8, keep_fp16 0.005, ...

    Outlier fields the method does not use are left out."""
    if group == "outliers":
        method = values.get("method")
        unused = outlier_scheme(method).unused_fields if method in OUTLIER_SCHEMES else ()
        values = {key: value for key, value in values.items() if key not in unused}
    words = {
        "method": lambda v: "no outliers" if v == "none" else v,
        "bits": lambda v: f"A{v}" if group == "activation" else f"{v}b",
        "group_size": lambda v: f"g{v}",
        "symmetric": lambda v: "sym" if v else "asym",
        "scale": lambda v: f"{v} scales",
        "clip": lambda v: f"clip {v}",
        "smooth_alpha": lambda v: f"smooth {v}",
        "threshold": lambda v: f"threshold {v}",
    }
    return [words.get(key, str)(value) for key, value in values.items()]


def describe_strategy(document: dict, max_rules: int = MAX_RULES) -> str:
    """Returns a strategy in one line: its default (what differs from the base), then up to `max_rules` rules."""
    try:
        strategy = parse_strategy(document)
    except StrategyError:
        return "not a valid strategy"
    base = BASE_DEFAULT.model_dump(exclude_none=True)
    default = {
        group: {**base[group], **values} for group, values in strategy.default.model_dump(exclude_none=True).items()
    }
    shown = {
        group: {k: v for k, v in values.items() if group == "weight" and k in ALWAYS_SHOWN or base[group].get(k) != v}
        for group, values in default.items()
    }
    parts = [" ".join(word for group, values in shown.items() for word in _fields(group, values))]
    for rule in strategy.rules[:max_rules]:
        genes = rule.model_dump(exclude_none=True, exclude={"layers", "modules"})
        words = [w for group, values in genes.items() for w in _fields(group, values)]
        parts.append(f"{rule.layers} {','.join(rule.modules)}: {' '.join(words) or 'no change'}")
    if len(strategy.rules) > max_rules:
        hidden = len(strategy.rules) - max_rules
        parts.append(f"{hidden} more rule{'s' if hidden > 1 else ''}")
    if strategy.arithmetic.compute_dtype != "fp32":
        parts.append(f"{strategy.arithmetic.compute_dtype} compute")
    if strategy.arithmetic.shift_scales:
        parts.append("shift scales")
    return "; ".join(parts)


def describe_member(member: Evaluated, max_rules: int = ELITE_RULES_SHOWN) -> str:
    """Returns an evaluated strategy in one line: bits per weight, KL, score and the strategy (not its name)."""
    bits = f"{member.bits:.2f} b/w" if member.bits is not None else "bits ?"
    kl = member.outcome if member.kl is None else f"KL {member.kl:.3f}" + ("" if member.outcome == "ok" else f" ({member.outcome})")
    return f"{bits}, {kl}, score {member.score:.3f}: {describe_strategy(member.document, max_rules)}"
