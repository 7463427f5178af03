"""LLM replies fuzzed: whatever a server sends back (JSON trees, strategy, edit and recombination documents with
wrong types and values, any text, deep nesting) becomes an accepted proposal or a recorded rejection with its
reason, never an exception. The replies come from Hypothesis in place of a model: the input under test."""

from __future__ import annotations

import json

import numpy as np
import pytest
from fuzzing import FUZZ, edit_documents, json_texts, recombinations
from hypothesis import given
from hypothesis import strategies as st

from agentqat.generators import Evaluated
from agentqat.generators.llm.generator import LlmGenerator
from agentqat.strategy.repair import within
from agentqat.strategy.space import SearchSpace

PARENTS = [
    {"name": "gptq4", "default": {"weight": {"bits": 4, "group_size": 64, "symmetric": False, "rounding": "gptq"}}},
    {"name": "rtn4", "default": {"weight": {"bits": 4, "group_size": 32, "symmetric": True}}},
]


class Replies:
    """A backend whose replies are given: each request gets the next one (then empty replies); counts requests."""

    name = "fuzzed replies"
    concurrency = 1

    def __init__(self, replies: list[str]):
        self.replies, self.requests = iter(replies), 0

    def generate(self, prompt, schema, seed, max_tokens):
        self.requests += 1
        return next(self.replies, "")


@pytest.fixture(scope="module")
def space(smollm2_shaped_facts):
    return SearchSpace(smollm2_shaped_facts, 4.5)


replies = json_texts | st.builds(json.dumps, edit_documents | recombinations)


@FUZZ
@given(texts=st.lists(replies, min_size=1, max_size=6), seed=st.integers(0, 2**16), survivors=st.integers(0, 2))
def test_every_reply_is_a_proposal_or_a_recorded_rejection(texts, seed, survivors, space):
    population = [Evaluated(parent, -0.1 * k, True, "ok", 0.1, 4.3) for k, parent in enumerate(PARENTS[:survivors])]
    backend = Replies(texts)
    generator = LlmGenerator(space, backend)
    proposals = generator.propose(population, len(texts), np.random.default_rng(seed))
    records = generator.take_records()
    assert len(proposals) + len(records) == backend.requests == generator.counts["accepted"] + generator.counts["rejected"]
    assert backend.requests >= len(texts) or len(proposals) == len(texts)
    assert all(within(document, space) for document in proposals)
    assert all(r.stream == "rejections" and r.data["reason"] and "\n" not in r.data["reason"] for r in records)
