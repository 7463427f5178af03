"""A model's shape for planning: its facts (built on the meta device, no weights) and the few config numbers that
size its activations, plus the work counts the rates multiply: forward parameters and Hessian entries."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from agentqat.errors import UserError
from agentqat.models import ModelFacts, model_facts, resolve_model_directory

# Linear modules that read one tensor share one Hessian (agentqat.strategy.calibration keys them by their input).
SHARED_INPUTS = {"q_proj": "qkv", "k_proj": "qkv", "v_proj": "qkv", "gate_proj": "gate_up", "up_proj": "gate_up"}


@dataclass(frozen=True)
class ModelShape:
    """A model's facts and the config numbers that size its activations."""

    facts: ModelFacts
    attention_heads: int
    intermediate_size: int
    tied_embeddings: bool

    @property
    def linear_weights(self) -> int:
        """Returns the weights of the quantizable linear modules."""
        return sum(info.in_features * info.out_features for info in self.facts.linears)

    @property
    def head_parameters(self) -> int:
        """Returns the output head's parameters (vocabulary x hidden size; tied or not, the head is a product)."""
        return self.facts.vocab_size * self.facts.hidden_size

    @property
    def forward_parameters(self) -> int:
        """Returns the multiply-adds per token of a forward pass: the linear modules' weights and the head."""
        return self.linear_weights + self.head_parameters


def hessian_widths(facts: ModelFacts, layer: int | None = None) -> tuple[int, ...]:
    """Returns the width (in_features) of every distinct calibration Hessian, of one decoder layer or of all:
    modules reading the same input (q/k/v, gate/up) share one."""
    inputs = {}
    for info in facts.linears:
        if layer is None or info.layer == layer:
            parent, _, leaf = info.name.rpartition(".")
            inputs[(info.layer, parent, SHARED_INPUTS.get(leaf, leaf))] = info.in_features
    return tuple(inputs.values())


def hessian_entries(facts: ModelFacts, layer: int | None = None) -> int:
    """Returns the entries of the distinct calibration Hessians (in_features^2 each), of one layer or of all."""
    return sum(width * width for width in hessian_widths(facts, layer))


def _first_line(error: Exception) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0][:300]


def shape_of(config, name: str) -> ModelShape:
    """Returns the shape of a transformers config (a PretrainedConfig or its dict with "model_type"), its model
    built on the meta device; raises UserError for an architecture transformers cannot build as a causal LM."""
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        if isinstance(config, dict):
            document = dict(config)
            config = AutoConfig.for_model(document.pop("model_type"), **document)
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config)
    except (ValueError, KeyError) as error:
        raise UserError(f"model {name} is not a causal LM transformers builds: {_first_line(error)}", "pass a causal LM's config") from None
    text = config.get_text_config()
    return ModelShape(
        facts=model_facts(model, name),
        attention_heads=int(text.num_attention_heads),
        intermediate_size=int(getattr(text, "intermediate_size", 4 * text.hidden_size)),
        tied_embeddings=bool(getattr(config, "tie_word_embeddings", False)),
    )


def load_shape(spec: str) -> ModelShape:
    """Returns the shape of the model named by `spec` (a built-in, a directory holding at least config.json, a
    .gguf file or a cached hub id) without loading its weights."""
    from transformers import AutoConfig

    directory = resolve_model_directory(spec)
    try:
        config = AutoConfig.from_pretrained(str(directory) if directory else spec)
    except (OSError, ValueError) as error:
        raise UserError(f"cannot read the config of model '{spec}': {_first_line(error)}", "pass a directory with a config.json, a built-in or a cached hub id") from None
    return shape_of(config, spec)
