"""Golden tests of the LLM generator's prompts: each template rendered for fixed inputs, pinned in tests/golden/.

After an intended change to a template or a describer, regenerate the files and review the diff:

    UPDATE_GOLDEN=1 .venv/bin/python -m pytest tests/test_prompts.py
"""

import json
import os
import re
from pathlib import Path

import pytest

from agentqat.generators import Evaluated
from agentqat.generators.llm.edits import common_group_sizes, edit_schema, propose_schema, recombine_schema
from agentqat.generators.llm.generator import PARENTS
from agentqat.generators.llm.prompts import (
    KINDS,
    TEMPLATES,
    Context,
    describe_model,
    describe_sensitivities,
    describe_strategy,
    example,
    render,
    template_name,
)
from agentqat.generators.llm.reflection import Reflection
from agentqat.strategy.space import SearchSpace

GOLDEN = Path(__file__).parent / "golden"
MAX_PROMPT_TOKENS = 1200  # the proposer's context is 2048 tokens, prompt and reply together


@pytest.fixture(scope="module")
def space(smollm2_shaped_facts):
    """A 4.5-bit search space on a model shaped like SmolLM2-135M."""
    return SearchSpace(smollm2_shaped_facts, 4.5)


def strategy(default: dict, *rules: dict, **arithmetic) -> dict:
    return {"schema_version": 1, "name": "s", "default": {"weight": default}, "rules": list(rules),
            "arithmetic": arithmetic}  # fmt: skip


PARENT_A = strategy(
    {"bits": 4, "group_size": 64, "rounding": "gptq"},
    {"layers": "0-3", "modules": ["mlp.down_proj"], "weight": {"bits": 8}},
    {"layers": "all", "modules": ["v_proj"], "outliers": {"method": "keep_fp16", "fraction": 0.005}},
    {"layers": "20-29", "modules": ["mlp"], "activation": {"bits": 8, "smooth_alpha": 0.5}},
    compute_dtype="bf16",
)
PARENT_B = strategy({"bits": 3, "group_size": 32, "symmetric": True, "rounding": "awq"},
                    {"layers": "0-4", "modules": ["all"], "weight": {"bits": 5}})  # fmt: skip
LOW_BIT = [
    strategy({"bits": 4, "group_size": group}, {"layers": "20-29", "modules": ["mlp"], "weight": {"bits": 2}})
    for group in (32, 64, 96, 192)
]
FATES = [("collapse", False), ("collapse", False), ("collapse", False), ("ok", True)]


def golden_context(space) -> Context:
    """Returns a context with every part filled: sensitivities, elite, lessons from a hand-made generation."""
    reflection = Reflection(space.facts)
    evaluated = [Evaluated(d, -9.0, ok, outcome, None, None) for d, (outcome, ok) in zip(LOW_BIT, FATES, strict=True)]
    reflection.observe(evaluated, ["mutate: edits[0].layers: layer 35 does not exist; the model has layers 0-29"] * 2)
    elite = [Evaluated(PARENT_A, -0.41, True, "ok", 0.152, 4.49), Evaluated(PARENT_B, -0.63, True, "ok", 0.301, 3.55)]
    return Context(
        model=describe_model(space.facts, common_group_sizes(space)),
        budget=space.bits_budget,
        sensitivities=describe_sensitivities({layer: 0.9 / (1 + layer) for layer in range(30)}, 30),
        elite=tuple(elite),
        lessons=tuple(dict.fromkeys(reflection.short_term + reflection.long_term)),
    )


def empty_context(space) -> Context:
    return Context(
        describe_model(space.facts, common_group_sizes(space)), 4.5, describe_sensitivities(None, 30), (), ()
    )


SCHEMAS = {"propose": propose_schema, "mutate": edit_schema, "recombine": lambda space: recombine_schema()}
EXAMPLE_SEED = 7
CASES = {  # golden file -> (kind, context builder, parents, template version)
    "propose.v1.txt": ("propose", golden_context, (), "v1"),
    "propose.v1.first.txt": ("propose", empty_context, (), "v1"),
    "mutate.v1.txt": ("mutate", golden_context, (PARENT_A,), "v1"),
    "recombine.v1.txt": ("recombine", golden_context, (PARENT_A, PARENT_B), "v1"),
    "propose.v2.txt": ("propose", golden_context, (), "v2"),
    "propose.v2.first.txt": ("propose", empty_context, (), "v2"),
    "mutate.v2.txt": ("mutate", golden_context, (PARENT_A,), "v2"),
    "recombine.v2.txt": ("recombine", golden_context, (PARENT_A, PARENT_B), "v2"),
}


@pytest.mark.parametrize("golden", sorted(CASES))
def test_rendered_prompt_matches_its_golden_file(space, golden):
    kind, context, parents, version = CASES[golden]
    text = render(kind, context(space), parents, version, example(SCHEMAS[kind](space), EXAMPLE_SEED))
    path = GOLDEN / golden
    if os.environ.get("UPDATE_GOLDEN") == "1":
        path.parent.mkdir(exist_ok=True)
        path.write_text(text, encoding="utf-8")
    assert text == path.read_text(encoding="utf-8"), f"{golden} changed; regenerate with UPDATE_GOLDEN=1 if intended"


def test_the_golden_context_carries_its_lessons(space):
    lessons = golden_context(space).lessons
    assert "3 of 4 strategies with 2-bit mlp in layers 20-29 collapsed" in lessons
    assert any(line.startswith("2 replies rejected like: mutate: edits[0].layers") for line in lessons)


@pytest.mark.parametrize(
    "document, line",
    [
        (PARENT_A, "4b g64 asym gptq; 0-3 mlp.down_proj: 8b; all v_proj: keep_fp16 0.005; 20-29 mlp: A8 smooth 0.5; "
                   "bf16 compute"),
        (PARENT_B, "3b g32 sym awq; 0-4 all: 5b"),
        (strategy({"bits": 2, "format": "int", "scale": "pow2", "clip": "mse"},
                  {"layers": "1", "modules": ["q_proj"], "outliers": {"method": "none", "fraction": 0.0}},
                  {"layers": "2", "modules": ["k_proj"], "outliers": {"method": "llm_int8", "fraction": 0.01}}),
         "2b g64 asym pow2 scales rtn clip mse; 1 q_proj: no outliers; 2 k_proj: llm_int8"),
        ({"default": {"weight": {"bits": 7}}}, "not a valid strategy"),
    ],
    ids=["mixed", "uniform-with-rule", "outliers", "invalid"],
)  # fmt: skip
def test_describe_strategy(document, line):
    assert describe_strategy(document) == line


def test_describe_strategy_caps_its_rules():
    assert (
        describe_strategy(PARENT_A, max_rules=1)
        == "4b g64 asym gptq; 0-3 mlp.down_proj: 8b; 2 more rules; bf16 compute"
    )


def test_describe_sensitivities():
    assert describe_sensitivities(None, 4) == "not measured"
    assert describe_sensitivities({0: 0.3, 1: 0.1, 3: 0.0}, 4) == (
        "KL when one layer alone is low-bit, 0-9 per layer from layer 0 (9 = KL 0.3): 93-0; most sensitive: 0, 1, 3"
    )


def test_unknown_request_kind():
    with pytest.raises(ValueError, match="unknown request kind 'breed'"):
        template_name("breed")


@pytest.mark.parametrize("kind", KINDS)
def test_each_v1_template_example_is_valid_under_its_schema(space, kind):
    import jsonschema

    text = (TEMPLATES / template_name(kind, "v1")).read_text(encoding="utf-8")
    fixed = json.loads(re.search(r"^Example: (\{.*\})$", text, re.MULTILINE).group(1))
    jsonschema.Draft202012Validator(SCHEMAS[kind](space)).validate(fixed)


@pytest.mark.parametrize("kind", KINDS)
def test_drawn_examples_are_valid_seeded_and_varied(space, kind):
    import jsonschema

    schema = SCHEMAS[kind](space)
    drawn = [example(schema, seed) for seed in range(40)]
    for text in drawn:
        jsonschema.Draft202012Validator(schema).validate(json.loads(text))
    assert drawn == [example(schema, seed) for seed in range(40)]
    assert len(set(drawn)) > 20
    prompt = render(kind, golden_context(space), (PARENT_A, PARENT_B)[: PARENTS[kind]], example=drawn[0])
    assert f"not a recommendation): {drawn[0]}\n" in prompt


@pytest.mark.slow
def test_prompts_fit_the_proposers_context(space, monkeypatch):
    """With SmolLM2's tokenizer and chat template: the longest prompt leaves room for the reply.
    $AGENTQAT_TEST_MODEL_CACHE, when set, is a cache that already holds the converted model."""
    from transformers import AutoTokenizer

    from agentqat.defaults import CACHE_ENV
    from agentqat.models import resolve_model_directory

    if os.environ.get("AGENTQAT_TEST_MODEL_CACHE"):
        monkeypatch.setenv(CACHE_ENV, os.environ["AGENTQAT_TEST_MODEL_CACHE"])
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_directory("smollm2-135m"))
    genes = {"weight": {"bits": 5, "group_size": 32}, "outliers": {"method": "keep_fp16", "fraction": 0.002}}
    many_rules = [{"layers": f"{k}-{k + 1}", "modules": ["mlp.down_proj", "q_proj"], **genes} for k in range(0, 28, 2)]
    long_parent = {**PARENT_A, "rules": PARENT_A["rules"] + many_rules}
    longs = [{**long_parent, "default": {"weight": {"bits": 4, "group_size": g}}} for g in (16, 32, 64, 96)]
    context = golden_context(space)
    lessons = context.lessons + tuple(f"{k} of 9 strategies with 2-bit attn in layers 0-9 gave NaN" for k in (2, 3))
    elite = tuple(Evaluated(long, -0.5, True, "ok", 0.2, 4.4) for long in longs)
    context = Context(context.model, context.budget, context.sensitivities, elite, lessons)
    counts = {}
    for kind, parents in (("propose", ()), ("mutate", (longs[0],)), ("recombine", (longs[0], longs[1]))):
        longest = max((example(SCHEMAS[kind](space), seed) for seed in range(500)), key=len)  # drawn examples vary
        messages = [{"role": "user", "content": render(kind, context, parents, example=longest)}]
        chat = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        counts[kind] = len(tokenizer(chat, add_special_tokens=False)["input_ids"])
    assert max(counts.values()) < MAX_PROMPT_TOKENS, counts
