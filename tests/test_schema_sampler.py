"""The schema sampler behind the llm-random-edits control and the prompts' examples: its samples validate."""

import json
import re

import jsonschema
import numpy as np
import pytest

from agentqat.generators.llm.edits import SPAN, edit_schema, propose_schema, recombine_schema
from agentqat.generators.llm.schema_sampler import sample_instance, sample_pattern
from agentqat.generators.random_edits import RandomJsonBackend
from agentqat.strategy.space import SearchSpace

SCHEMAS = {"propose": propose_schema, "mutate": edit_schema, "recombine": lambda space: recombine_schema()}


@pytest.fixture(scope="module")
def space(smollm2_shaped_facts):
    return SearchSpace(smollm2_shaped_facts, 4.5)


@pytest.mark.parametrize("kind", sorted(SCHEMAS))
def test_samples_of_the_request_schemas_validate_and_vary(space, kind):
    schema = SCHEMAS[kind](space)
    validator = jsonschema.Draft202012Validator(schema)
    samples = [sample_instance(schema, np.random.default_rng(seed)) for seed in range(200)]
    for sample in samples:
        validator.validate(sample)
    assert len({json.dumps(s, sort_keys=True) for s in samples}) > 50
    assert samples[:20] == [sample_instance(schema, np.random.default_rng(seed)) for seed in range(20)]


@pytest.mark.parametrize("schema", [
    {"type": "object", "properties": {"n": {"type": "integer", "minimum": 3, "maximum": 5}, "x": {"type": "number"}},
     "required": ["n", "x"]},
    {"type": "array", "items": {"type": ["string", "boolean", "null"]}, "minItems": 2, "maxItems": 4},
    {"anyOf": [{"const": "a"}, {"type": "string", "pattern": "^[a-c]{2}(x|yz)?$"}]},
    {"$defs": {"A": {"enum": [1, 2.5, "three"]}}, "type": "array", "items": {"$ref": "#/$defs/A"}},
])  # fmt: skip
def test_samples_of_the_keywords_it_knows_validate(schema):
    validator = jsonschema.Draft202012Validator(schema)
    for seed in range(100):
        validator.validate(sample_instance(schema, np.random.default_rng(seed)))


@pytest.mark.parametrize("schema", [{"type": "array", "uniqueItems": True}, {"not": {"type": "string"}},
                                    {"$ref": "https://example.com/s.json"}, {"title": "no type"}])  # fmt: skip
def test_what_it_cannot_honour_is_refused(schema):
    with pytest.raises(ValueError, match="schema sampler"):
        sample_instance(schema, np.random.default_rng(0))


def test_patterns_draw_full_matches():
    for pattern in (SPAN, r"^[0-9]+(,[0-9]+)*$", r"^(all|[^x]{2}|\d-\d)$"):
        for seed in range(100):
            assert re.fullmatch(pattern, sample_pattern(pattern, np.random.default_rng(seed)))


def test_the_random_backend_replies_json_seeded_by_the_request(space):
    schema, backend = edit_schema(space), RandomJsonBackend()
    reply = backend.generate("any prompt", schema, seed=5, max_tokens=1)
    jsonschema.Draft202012Validator(schema).validate(json.loads(reply))
    assert backend.generate("another prompt", schema, seed=5, max_tokens=1) == reply
    assert backend.generate("any prompt", schema, seed=6, max_tokens=1) != reply
