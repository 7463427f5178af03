"""Strategy files fuzzed through `agentqat validate` in process: JSON trees, strategy-shaped documents with
wrong types and values, random bytes and deep nesting all end with exit 0 (a valid strategy) or 2 and one
line per problem, never a traceback; one subprocess run checks the same from the outside."""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys

import pytest
from fuzzing import FUZZ, deep_texts, strategy_documents, trees
from hypothesis import given
from hypothesis import strategies as st

from agentqat.cli import main
from agentqat.strategy.document import MAX_SHOWN, TOO_DEEP


@pytest.fixture(scope="module")
def strategy_file(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz") / "strategy.json"


def validate(path, model) -> tuple[int, list[str]]:
    """Returns `agentqat validate PATH --model MODEL`'s exit code and output lines (stdout and stderr)."""
    output = io.StringIO()
    with contextlib.redirect_stdout(output), contextlib.redirect_stderr(output):
        code = main(["validate", str(path), "--model", str(model)])
    return code, output.getvalue().splitlines()


def assert_one_line_per_problem(code: int, lines: list[str]) -> None:
    assert code == 2, lines
    assert lines[0].startswith("invalid ") and len(lines) >= 2
    assert all(len(line) <= 300 + MAX_SHOWN for line in lines[1:]), lines


@FUZZ
@given(document=strategy_documents)
def test_strategy_shaped_documents_are_valid_or_one_line_per_problem(document, strategy_file, tiny_llama_dir):
    strategy_file.write_text(json.dumps(document))
    code, lines = validate(strategy_file, tiny_llama_dir)
    if code != 0:
        assert_one_line_per_problem(code, lines)


@FUZZ
@given(text=st.builds(json.dumps, trees) | deep_texts | st.text(max_size=300))
def test_json_trees_deep_nesting_and_text_are_refused_in_one_line(text, strategy_file, tiny_llama_dir):
    strategy_file.write_text(text)
    code, lines = validate(strategy_file, tiny_llama_dir)
    if code != 0:  # {} and other objects of valid genes are strategies
        assert_one_line_per_problem(code, lines)


@FUZZ
@given(data=st.binary(max_size=2000))
def test_random_bytes_are_refused_in_one_line(data, strategy_file, tiny_llama_dir):
    strategy_file.write_bytes(data)
    code, lines = validate(strategy_file, tiny_llama_dir)
    if code != 0:
        assert_one_line_per_problem(code, lines)


def test_a_document_nested_past_the_parser_s_recursion_limit_is_exit_2(tmp_path, tiny_llama_dir):
    """The hidden malformed file of issue 14, from the outside: exit 2, one line, no traceback."""
    path = tmp_path / "deep.json"
    path.write_text("[" * 100_000)
    done = subprocess.run([sys.executable, "-m", "agentqat.cli", "validate", str(path), "--model", str(tiny_llama_dir)],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    assert TOO_DEEP in done.stdout
