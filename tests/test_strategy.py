"""The strategy document: schema file in sync, compiles for constrained decoding, clear errors."""

import json
from pathlib import Path

import pytest

from agentqat.strategy.document import (
    MAX_FILE_BYTES,
    Strategy,
    StrategyError,
    dump_strategy,
    load_strategy,
    parse_strategy_text,
    strategy_json_schema,
)

SCHEMA_FILE = Path(__file__).resolve().parent.parent / "schemas" / "strategy.schema.json"
DESIGN_EXAMPLE = {
    "schema_version": 1,
    "default": {"weight": {"bits": 4, "group_size": 64, "symmetric": False, "format": "int", "scale": "fp16", "rounding": "rtn", "clip": 1.0}},
    "rules": [
        {"layers": "0-3", "modules": ["mlp.down_proj"], "weight": {"bits": 8}},
        {"layers": "all", "modules": ["self_attn.v_proj"], "outliers": {"method": "keep_fp16", "fraction": 0.005}},
        {"layers": "20-29", "modules": ["mlp.*"], "activation": {"bits": 8, "granularity": "per_token", "smooth_alpha": 0.5}},
    ],
    "arithmetic": {"compute_dtype": "bf16"},
}


def test_schema_file_is_generated_from_the_model():
    assert json.loads(SCHEMA_FILE.read_text()) == strategy_json_schema(), (
        "schemas/strategy.schema.json is stale: run `python -m agentqat.strategy.document > schemas/strategy.schema.json`"
    )


def test_schema_compiles_in_outlines_core():
    from outlines_core.json_schema import build_regex_from_schema

    assert build_regex_from_schema(SCHEMA_FILE.read_text())


def test_schema_compiles_in_xgrammar():
    import xgrammar

    assert xgrammar.Grammar.from_json_schema(SCHEMA_FILE.read_text(), any_whitespace=False)


def test_schema_bounds_every_integer_with_an_enum():
    def walk(node):
        if isinstance(node, dict):
            if node.get("type") == "integer":
                assert "enum" in node or "const" in node, node
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(strategy_json_schema())


def test_design_example_is_valid_and_round_trips():
    strategy = parse_strategy_text(json.dumps(DESIGN_EXAMPLE))
    assert strategy.rules[2].activation.smooth_alpha == 0.5
    assert parse_strategy_text(dump_strategy(strategy)) == strategy


def test_strategy_is_frozen():
    strategy = Strategy()
    with pytest.raises(Exception):
        strategy.name = "changed"


@pytest.mark.parametrize(
    "text, expected",
    [
        ("", "empty"),
        ("   \n", "empty"),
        ('{"schema_version": 1, "rules": [', "truncated"),
        ("not json at all", "not valid JSON"),
        ("[1, 2]", "must be a JSON object"),
        ('{"schema_version": 2}', "schema_version: 2 is not supported"),
        ('{"colour": "red"}', "colour: unknown key"),
        ('{"default": {"weight": {"bits": 7}}}', "default.weight.bits"),
        ('{"default": {"weight": {"bits": "four"}}}', "default.weight.bits"),
        ('{"default": {"weight": {"group_size": 100}}}', "default.weight.group_size"),
        ('{"default": {"weight": {"format": "int3"}}}', "default.weight.format"),
        ('{"rules": [{"layers": "first three"}]}', "rules[0].layers"),
        ('{"rules": [{"modules": []}]}', "rules[0].modules"),
        ('{"rules": [{"modules": ["mlp; rm -rf /"]}]}', "rules[0].modules"),
        ('{"rules": [{"weight": {"bitz": 4}}]}', "rules[0].weight.bitz: unknown key"),
        ('{"arithmetic": {"compute_dtype": "fp64"}}', "arithmetic.compute_dtype"),
        ('{"rules": "all"}', "rules: must be a JSON array"),
        ('{"default": null}', "default: must be a JSON object"),
        ('{"rules": [5]}', "rules[0]: must be a JSON object"),
        ('{"rules": [{"layers": 5}]}', "rules[0].layers"),
        ('{"default": {"weight": {"symmetric": "yes"}}}', "default.weight.symmetric"),
        ('{"default": {"weight": {"clip": NaN}}}', "default.weight.clip"),
    ],
    ids=lambda value: value if len(value) < 30 else value[:27] + "...",
)
def test_malformed_documents_get_one_clear_line_each(text, expected):
    with pytest.raises(StrategyError) as caught:
        parse_strategy_text(text)
    assert len(caught.value.lines) == 1
    assert expected in caught.value.lines[0]


def test_several_problems_give_several_lines():
    with pytest.raises(StrategyError) as caught:
        parse_strategy_text('{"default": {"weight": {"bits": 7, "group_size": 100}}, "extra": 1}')
    assert len(caught.value.lines) == 3


@pytest.mark.parametrize(
    "content, expected",
    [(None, "no such file"), (b"\xff\xfe\x00binary", "not UTF-8"), (b" " * (MAX_FILE_BYTES + 1), "at most")],
    ids=["missing", "binary", "huge"],
)
def test_bad_files(tmp_path, content, expected):
    path = tmp_path / "strategy.json"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(StrategyError) as caught:
        load_strategy(path)
    assert expected in str(caught.value)
    assert str(path) in str(caught.value)
