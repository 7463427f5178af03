"""A strategy's identity: what it does to one model, with the genes that have no effect dropped.

Two documents are twins when their canonical layouts are equal: after rules are layered (one config per module)
and each module's config is reduced to the genes that change its quantized weight, its computation or its
storage. Dropped (set to the defaults), per module:

    unquantized weights (bits 16)   every other weight gene and the outlier policy (the weight is copied whole,
                                    outliers cost nothing); SmoothQuant too when activations stay at 16 bits
                                    (W·diag(s) and X/s cancel)
    activations at 16 bits          activation format and granularity
    outlier policy fields           those its `OutlierScheme` does not read (`unused_fields`): none reads none,
                                    keep_fp16 fraction and criterion, llm_int8 threshold
    arithmetic.shift_scales         compiled into the configs' power-of-two scales (as every layout is)

`canonical_id` hashes the canonical layout; the evolution loop uses it to find duplicate proposals, so that twins
are neither played nor kept twice. Documents that do not resolve against the model (which the arena refuses)
keep their `strategy_id`: never the twin of a valid strategy.
"""

from __future__ import annotations

from dataclasses import replace

from agentqat.models import ModelFacts
from agentqat.quant.base import ActivationQuant, OutlierPolicy, WeightQuant
from agentqat.quant.schemes import outlier_scheme, without_transforms
from agentqat.strategy.document import StrategyError, parse_strategy, strategy_id
from agentqat.strategy.layout import Layout, document_of, layout_of
from agentqat.strategy.resolve import ModuleConfig, resolve_strategy

UNQUANTIZED = 16
_NO_OUTLIERS, _ACTIVATION = OutlierPolicy(), ActivationQuant()


def canonical_config(config: ModuleConfig) -> ModuleConfig:
    """Returns the config with every gene that has no effect set to its default (see the module docstring)."""
    weight, activation, outliers = config.weight, config.activation, config.outliers
    if weight.bits == UNQUANTIZED:
        weight, outliers = WeightQuant(bits=UNQUANTIZED), _NO_OUTLIERS
        if activation.bits == UNQUANTIZED:
            activation = without_transforms(activation)
    if activation.bits == UNQUANTIZED:
        activation = replace(activation, format=_ACTIVATION.format, granularity=_ACTIVATION.granularity)
    unused = outlier_scheme(outliers).unused_fields
    outliers = replace(outliers, **{name: getattr(_NO_OUTLIERS, name) for name in unused})
    return ModuleConfig(weight, activation, outliers)


def canonical_layout(document: dict, facts: ModelFacts) -> Layout:
    """Returns the document's layout on this model with every module's config canonical; raises StrategyError."""
    layout = layout_of(document, facts)
    return Layout(tuple(canonical_config(config) for config in layout.configs), layout.compute_dtype)


def canonical_id(document: dict, facts: ModelFacts) -> str:
    """Returns the id of what the document does to this model (its canonical layout compiled and hashed); a
    document that does not resolve keeps its `strategy_id`."""
    try:
        resolve_strategy(parse_strategy(document), facts)
        return strategy_id(document_of(canonical_layout(document, facts), facts, "canonical"))
    except (StrategyError, ValueError):
        return strategy_id(document)
