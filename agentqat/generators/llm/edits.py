"""What the LLM writes, besides whole strategies: edit documents (mutate a parent) and recombinations (cross two).

A small model writes a few edits more reliably than a whole strategy, so a mutation is a document the code
applies to the parent's layout:

    {"edits": [{"operator": "set_bits", "layers": "20-29", "modules": "mlp", "value": 3}]}

`layers` is "all" or one span ("7", "20-29"); `modules` a role (all, attn, mlp) or a module name (down_proj).
Operators and their values:

    set_bits        a width of the gene choices (16 leaves the weight unquantized)
    bit_shift       1 or -1: one step up or down over the allowed widths (unchanged at the ends)
    set_format      a registered format (int, nf4, fp4, fp8_e4m3, llm_int8, gguf_*), with what it needs (its
                    code width, its rounding, its scales, a block size it takes)
    set_group_size  a group size (0 = per channel); must fit the selected modules' input widths and format
    set_rounding    a registered rounding (rtn, gptq, awq, hqq); it must be the format's (gptq/awq/hqq: int)
    set_scale       fp16 or pow2; it must be the format's (pow2: int or fp8_e4m3)
    set_symmetric   true or false
    set_outliers    none, keep_fp16 (a middle fraction of the choices) or llm_int8 (threshold unchanged)
    set_level       a level of the arena's ladder by name (e.g. "gptq-w3-g64-asym"; arenas with [levels] only):
                    the selected modules take that level's whole config; a fused set (q/k/v, gate/up) moves as
                    one, so selecting q_proj sets k_proj and v_proj too. Over budget, a ladder layout stays on
                    the ladder: other module units fall a level until it fits

set_bits, bit_shift and set_format make the configs they touch valid (a fixed-width format becomes int when its
width changes); the other operators must be valid as written, and the edits together must change something.
A recombination picks the parents' layers:

    {"crossover": "spans", "spans": [{"layers": "15-29", "parent": "B"}]}

`layerwise` and `blockwise` use the operators' random masks; `spans` takes every layer from parent A except the
listed spans (later spans win). Applying either raises EditError with a reason naming what to fix. Integers
are bounded by `enum` (outlines-core ignores minimum/maximum); `*_schema(space)` narrow the schemas sent to the
LLM to the model's module names and the search space's gene choices, always a subset of what the models accept.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from typing import Annotated, Any, Literal, Union

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, create_model

from agentqat.generators.operators import blockwise, cross_layers, layerwise
from agentqat.generators.switches import layout_at, snap_to_ladder, unit_closure
from agentqat.levels.ladder import level_name
from agentqat.models import ModelFacts
from agentqat.quant.base import INT_GRID
from agentqat.quant.registry import format_method, formats_taking_scale, formats_with_rounding
from agentqat.quant.schemes import outlier_scheme
from agentqat.strategy.document import MODULE_PATTERN, Bits, GroupSize, OutlierMethod, Rounding, WeightFormat, strategy_json_schema
from agentqat.strategy.layout import Layout, document_of, layout_bits, layout_of
from agentqat.strategy.repair import fix_config, repair_layout, valid_group_sizes
from agentqat.strategy.resolve import ROLE_PATTERNS, ModuleConfig, module_role_name, parse_layers, pattern_matches
from agentqat.strategy.space import SearchSpace

SPAN = r"^(all|[0-9]{1,3}(-[0-9]{1,3}|))$"  # `(-N|)`, not `(-N)?`: see LAYER_SPEC in agentqat/strategy/document.py
LEVEL_NAME = r"^[a-z0-9_.-]{1,64}$"
MAX_EDITS = 3
MAX_SPANS = 4
MAX_PROPOSED_RULES = 4
MAX_PROPOSED_MODULES = 3


class EditError(ValueError):
    """An edit document or recombination that cannot be applied; the message says why."""


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


# operator -> (type of its value, the GeneChoices field its values are narrowed to, or None)
OPERATORS: dict[str, tuple[Any, str | None]] = {
    "set_bits": (Bits, "bits"),
    "bit_shift": (Literal[-1, 1], None),
    "set_format": (WeightFormat, "formats"),
    "set_group_size": (GroupSize, "group_sizes"),
    "set_rounding": (Rounding, "roundings"),
    "set_scale": (Literal["fp16", "pow2"], "scales"),
    "set_symmetric": (bool, "symmetric"),
    "set_outliers": (OutlierMethod, "outlier_methods"),
    "set_level": (Annotated[str, Field(pattern=LEVEL_NAME)], None),
}
EDIT_MODELS = {
    operator: create_model(
        "Edit_" + operator,
        __base__=_Frozen,
        operator=(Literal[operator], ...),
        layers=(str, Field(pattern=SPAN)),
        modules=(str, Field(pattern=MODULE_PATTERN)),
        value=(value_type, ...),
    )
    for operator, (value_type, _) in OPERATORS.items()
}
Edit = Annotated[Union[tuple(EDIT_MODELS.values())], Field(discriminator="operator")]  # noqa: UP007


class EditDocument(_Frozen):
    """A mutation the LLM asks for: edits applied in order to the parent."""

    edits: tuple[Edit, ...] = Field(min_length=1, max_length=MAX_EDITS)


class Span(_Frozen):
    """Layers the child takes from one parent."""

    layers: str = Field(pattern=SPAN)
    parent: Literal["A", "B"]


class Recombination(_Frozen):
    """A crossover the LLM asks for: a random mask, or spans of layers from each parent."""

    crossover: Literal["layerwise", "blockwise", "spans"]
    spans: tuple[Span, ...] = Field((), max_length=MAX_SPANS)


# ------------------------------------------------------------------------------------------------ schemas
def module_names(facts: ModelFacts) -> tuple[str, ...]:
    """Returns what an edit or rule may select in this model: the roles, then every module's last name part."""
    return (*ROLE_PATTERNS, *sorted({module_role_name(info).rsplit(".", 1)[-1] for info in facts.linears}))


def common_group_sizes(space: SearchSpace) -> tuple[int, ...]:
    """Returns the allowed group sizes that fit every module's input width."""
    return valid_group_sizes(INT_GRID, {info.in_features for info in space.facts.linears}, space.choices)


def _narrow(node: dict, allowed: tuple) -> None:
    """Narrows a property in place to the values in `allowed`, dropping its null alternative."""
    arms = [arm for arm in node.pop("anyOf", [node]) if arm.get("type") != "null"]
    node.pop("default", None)
    node.update(arms[0])
    if "enum" in node:
        node["enum"] = [v for v in node["enum"] if any(v == a and type(v) is type(a) for a in allowed)]
    elif node.get("type") == "boolean":
        node["enum"] = list(allowed)


def _choices(space: SearchSpace, field: str) -> tuple:
    return common_group_sizes(space) if field == "group_sizes" else getattr(space.choices, field)


GENE_FIELDS = {  # schema definition -> {property: GeneChoices field}
    "WeightGene": {"bits": "bits", "group_size": "group_sizes", "symmetric": "symmetric", "format": "formats",
                   "scale": "scales", "rounding": "roundings", "clip": "clips"},
    "ActivationGene": {"bits": "activation_bits", "format": "activation_formats", "granularity": "granularities",
                       "smooth_alpha": "smooth_alphas"},
    "OutlierGene": {"method": "outlier_methods", "fraction": "outlier_fractions", "criterion": "outlier_criteria",
                    "threshold": "outlier_thresholds"},
    "Arithmetic": {"compute_dtype": "compute_dtypes"},
}  # fmt: skip


def propose_schema(space: SearchSpace) -> dict:
    """Returns the strategy schema narrowed for proposals: no name or notes, few rules over single layer spans,
    the model's module names, the gene choices (group sizes fitting every module)."""
    schema = strategy_json_schema()
    for key in ("schema_version", "name", "notes"):
        del schema["properties"][key]
    schema["properties"]["rules"]["maxItems"] = MAX_PROPOSED_RULES
    rule = schema["$defs"]["Rule"]["properties"]
    rule["layers"]["pattern"] = SPAN
    rule["modules"]["items"] = {"enum": list(module_names(space.facts)), "type": "string"}
    rule["modules"]["maxItems"] = MAX_PROPOSED_MODULES
    for definition, fields in GENE_FIELDS.items():
        for key, field in fields.items():
            _narrow(schema["$defs"][definition]["properties"][key], _choices(space, field))
    return schema


def edit_schema(space: SearchSpace) -> dict:
    """Returns the EditDocument schema narrowed to the model's module names, the gene choices and the ladder's
    level names (set_level left out without a ladder)."""
    schema = EditDocument.model_json_schema()
    for operator, (_, field) in OPERATORS.items():
        properties = schema["$defs"][EDIT_MODELS[operator].__name__]["properties"]
        properties["modules"] = {"enum": list(module_names(space.facts)), "type": "string"}
        if field is not None:
            _narrow(properties["value"], _choices(space, field))
    level_model = EDIT_MODELS["set_level"].__name__
    if space.ladder:
        schema["$defs"][level_model]["properties"]["value"] = {"enum": [level_name(c) for c in space.ladder], "type": "string"}
    else:
        del schema["$defs"][level_model]
        items = schema["properties"]["edits"]["items"]
        items["oneOf"] = [arm for arm in items["oneOf"] if arm["$ref"] != f"#/$defs/{level_model}"]
        items["discriminator"]["mapping"].pop("set_level")
    return schema


def recombine_schema() -> dict:
    """Returns the Recombination schema."""
    return Recombination.model_json_schema()


def parse_reply(text: str, model: type[BaseModel]) -> BaseModel:
    """Returns the reply validated as `model` (strict JSON types); raises pydantic's ValidationError."""
    return model.model_validate_json(text, strict=True)


# ---------------------------------------------------------------------------------------------- applying
def _weight(config: ModuleConfig, **fields: Any) -> ModuleConfig:
    return replace(config, weight=replace(config.weight, **fields))


def _shift(config: ModuleConfig, step: int, space: SearchSpace) -> ModuleConfig:
    widths = sorted(space.choices.bits)
    position = widths.index(config.weight.bits) + step if config.weight.bits in widths else -1
    return _weight(config, bits=widths[position]) if 0 <= position < len(widths) else config


def _format(config: ModuleConfig, weight_format: str, space: SearchSpace) -> ModuleConfig:
    """Returns the config in another format, at a code width it stores (its own if the bits are not one)."""
    widths, bits = format_method(weight_format).bits, config.weight.bits
    keep = bits in widths or (bits == 16 and len(widths) > 1)
    return _weight(config, format=weight_format, bits=bits if keep else min(widths, key=lambda w: abs(w - bits)))


def _outliers(config: ModuleConfig, method: str, space: SearchSpace) -> ModuleConfig:
    kept = space.choices.kept_fractions
    fraction = (config.outliers.fraction or kept[len(kept) // 2]) if "fraction" in outlier_scheme(method).fields and kept else 0.0
    return replace(config, outliers=replace(config.outliers, method=method, fraction=fraction))


Change = Callable[[ModuleConfig, Any, SearchSpace], ModuleConfig]
CHANGES: dict[str, Change] = {
    "set_bits": lambda c, v, s: _weight(c, bits=v),
    "bit_shift": _shift,
    "set_format": _format,
    "set_group_size": lambda c, v, s: _weight(c, group_size=v),
    "set_rounding": lambda c, v, s: _weight(c, rounding=v),
    "set_scale": lambda c, v, s: _weight(c, scale=v),
    "set_symmetric": lambda c, v, s: _weight(c, symmetric=v),
    "set_outliers": _outliers,
    "set_level": lambda c, v, s: _level(v, s),
}
MADE_VALID = ("set_bits", "bit_shift", "set_format", "set_level")  # the others must be valid as written


def _level(name: str, space: SearchSpace) -> ModuleConfig:
    """Returns the ladder level called `name`; raises EditError naming the levels when there is none."""
    levels = {level_name(config): config for config in space.ladder}
    if name not in levels:
        known = ", ".join(levels) if levels else "none: this arena declares no [levels] ladder"
        raise EditError(f"set_level {name!r} is no level of the ladder; levels: {known}")
    return levels[name]


def _why_invalid(config: ModuleConfig, fixed: ModuleConfig, in_features: int, space: SearchSpace) -> str:
    """Returns what makes `config` invalid, given the valid config `fix_config` made of it."""
    weight = config.weight
    if fixed.weight.group_size != weight.group_size:
        sizes = valid_group_sizes(weight.format, (in_features,), space.choices)
        return f"format {weight.format} on input width {in_features} takes group sizes {list(sizes)}"
    if fixed.weight.rounding != weight.rounding:
        formats = formats_with_rounding(weight.rounding)
        return f"rounding {weight.rounding} needs format {' or '.join(formats)}, these modules use {weight.format}"
    formats = formats_taking_scale(weight.scale)
    return f"scale {weight.scale} needs format {' or '.join(formats)}, these modules use {weight.format}"


def _edited(layout: Layout, edit: BaseModel, where: str, space: SearchSpace) -> tuple[Layout, list[int]]:
    """Returns the layout with one edit applied and the indices it selected; raises EditError when it cannot."""
    facts = space.facts
    try:
        layers = set(parse_layers(edit.layers, facts.num_layers))
    except ValueError as error:
        raise EditError(f"{where}.layers: {error}") from None
    region = [i for i, info in enumerate(facts.linears) if info.layer in layers and pattern_matches(edit.modules, info)]
    if not region:
        raise EditError(f"{where}.modules: {edit.modules!r} selects no module in layers {edit.layers}")
    if edit.operator == "set_level":
        region = unit_closure(region, facts)
    configs = []
    for index in region:
        info = facts.linears[index]
        changed = CHANGES[edit.operator](layout.configs[index], edit.value, space)
        fixed = fix_config(changed, info.in_features, space.choices)
        if fixed != changed and edit.operator not in MADE_VALID:
            reason = _why_invalid(changed, fixed, info.in_features, space)
            what = f"{edit.operator} {json.dumps(edit.value)} on {edit.modules} in layers {edit.layers}"
            raise EditError(f"{where}: {what}: {reason}")
        configs.append(fixed)
    return layout.replaced(region, configs), region


def apply_edits(
    parent: dict, document: EditDocument, space: SearchSpace, rng: np.random.Generator
) -> tuple[dict, bool]:
    """Returns the parent with the edits applied, within budget, and whether the budget repair changed it.

    Raises EditError naming the first edit that cannot apply, or when the edits together change nothing (an edit
    that changes nothing beside others that do is harmless). Over budget, other modules than the edited ones pay
    first (`repair_layout` spares the edited regions).
    """
    layout = parent_layout = layout_of(parent, space.facts)
    touched: set[int] = set()
    for position, edit in enumerate(document.edits):
        layout, region = _edited(layout, edit, f"edits[{position}]", space)
        touched.update(region)
    if layout == parent_layout:
        raise EditError("edits: they change nothing; the parent already has what they set")
    if space.ladder and set(layout.configs) <= set(space.ladder):  # a ladder layout stays on the ladder
        repaired = layout_at(snap_to_ladder(layout, space, rng, touched), space, layout.compute_dtype)
    else:
        repaired = repair_layout(layout, space, rng, touched)
    return document_of(repaired, space.facts, "edited"), repaired != layout


def apply_recombination(
    first: dict, second: dict, document: Recombination, space: SearchSpace, rng: np.random.Generator
) -> tuple[dict, bool]:
    """Returns the child of parents A (`first`) and B and whether it was over budget before giving layers back.

    Raises EditError when a span names missing layers or when the spans copy one parent whole.
    """
    facts = space.facts
    if document.crossover == "spans":
        take_first = np.ones(facts.num_layers, dtype=bool)
        for position, span in enumerate(document.spans):
            try:
                take_first[list(parse_layers(span.layers, facts.num_layers))] = span.parent == "A"
            except ValueError as error:
                raise EditError(f"spans[{position}].layers: {error}") from None
        if take_first.all() or not take_first.any():
            raise EditError(f"spans: the child takes every layer from parent {'A' if take_first.all() else 'B'}; "
                            "name the layers to take from the other parent")  # fmt: skip
    else:
        take_first = (layerwise if document.crossover == "layerwise" else blockwise)(facts.num_layers, rng)
    parents = (layout_of(first, facts), layout_of(second, facts))
    naive = Layout(
        tuple(parents[0 if take_first[info.layer] else 1].configs[i] for i, info in enumerate(facts.linears)),
        parents[0].compute_dtype,
    )
    child = cross_layers(document.crossover, lambda layers, _: take_first, first, second, space, rng)
    return child, layout_bits(naive, facts) > space.bits_budget
