"""The `llm-random-edits` control: the LLM generator's whole pipeline with the LLM replaced by random JSON.

Everything but the decoder is the LLM generator's (`LlmGenerator`): the same request kinds drawn with the same
weights, the same elite parents, the same prompts rendered (and then not read), the same edit and recombine
documents applied, the same checks, repair, duplicate rejection, reflection and records. Each reply is drawn
uniformly at random from the request's constrained schema (`schema_sampler.sample_instance`, seeded by the
request's seed) instead of being decoded by a model. The gap between the `llm` arm and this one is what the
LLM's reading of the prompt adds; the gap between this one and `random` is what the pipeline (edits of the
elite, crossovers, repair) adds.

Unlike an LLM reply, a drawn reply is never cut at the token limit (`max_tokens` is not used).
"""

from __future__ import annotations

import json
from collections.abc import Mapping

import numpy as np

from agentqat.generators.base import register_generator
from agentqat.generators.llm.generator import LlmGenerator
from agentqat.generators.llm.schema_sampler import sample_instance
from agentqat.strategy.space import SearchSpace


class RandomJsonBackend:
    """A JsonBackend whose reply is a random instance of the request's schema, drawn from the request's seed."""

    name = "random-json (schema sampler)"
    concurrency = 1  # nothing to wait for

    def generate(self, prompt: str, schema: dict, seed: int, max_tokens: int) -> str:
        """Returns a random instance of `schema` drawn with default_rng(seed), as JSON (the prompt unread)."""
        return json.dumps(sample_instance(schema, np.random.default_rng(seed)))


@register_generator("llm-random-edits")
class RandomEditsGenerator(LlmGenerator):
    """The LLM generator's pipeline with replies drawn at random from each request's schema (module docstring)."""

    name = "llm-random-edits"

    def __init__(self, space: SearchSpace, sensitivities: Mapping[int, float] | None = None, reflect: bool = True):
        super().__init__(space, RandomJsonBackend(), sensitivities, reflect)
