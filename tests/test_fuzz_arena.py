"""Arena TOML files fuzzed: arena-shaped documents with wrong types and values, any text, random bytes, deep
nesting and files too large all load as an Arena or end in one UserError line, never a traceback."""

from __future__ import annotations

import contextlib
import io
import json
import math

import pytest
from fuzzing import FUZZ, valid_or_wrong
from hypothesis import given
from hypothesis import strategies as st

from agentqat.arena.config import MAX_FILE_BYTES, Arena, load_arena
from agentqat.cli import main
from agentqat.errors import UserError


def toml_value(value: object) -> str:
    """Returns `value` written as a TOML value (JSON-escaped strings, inline tables)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and not math.isfinite(value):
        return ("-" if value < 0 else "") + ("nan" if math.isnan(value) else "inf")
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(map(toml_value, value)) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(k)} = {toml_value(v)}" for k, v in value.items()) + "}"
    return json.dumps(value)  # strings, and None as "null" (not TOML: a syntax error)


toml_scalars = st.booleans() | st.integers() | st.floats() | st.text(max_size=12)
toml_trees = st.recursive(toml_scalars, lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=6), c, max_size=3), max_leaves=8)
fields = {
    "name": valid_or_wrong("tiny", "a\x00b", "x" * 600), "model": valid_or_wrong("smollm2-135m", "/no/such\nmodel"),
    "corpus": valid_or_wrong("lee-news", "a\x00b"), "seed": valid_or_wrong(0, -1, 2**70), "window_tokens": valid_or_wrong(64, 8),
    "calibration_windows": valid_or_wrong(4, 0), "bits_budget": valid_or_wrong(4.5, math.nan, math.inf),
    "collapse_ratio": valid_or_wrong(10.0, 1.0), "match_seconds": valid_or_wrong(60.0, -1.0), "surprise": toml_trees,
}  # fmt: skip
stage = st.fixed_dictionaries({}, optional={
    "name": valid_or_wrong("screen", "confirm", ""), "windows": valid_or_wrong(2, 0, 10**6), "window_sets": valid_or_wrong(1, 3, 9),
    "promote": valid_or_wrong(0.5, 0.0, 2.0), "cloze": valid_or_wrong(True, "yes"), "qa": valid_or_wrong(False, 1),
})  # fmt: skip


def arena_text(top: dict, stages: list[dict], score: dict) -> str:
    """Returns an arena file: top-level keys, then [score], then one [[stages]] table per stage."""
    lines = [f"{json.dumps(key)} = {toml_value(value)}" for key, value in top.items()]
    lines += ["[score]", *(f"{json.dumps(k)} = {toml_value(v)}" for k, v in score.items())] if score else []
    for table in stages:
        lines += ["[[stages]]", *(f"{json.dumps(k)} = {toml_value(v)}" for k, v in table.items())]
    return "\n".join(lines) + "\n"


arena_texts = st.builds(
    arena_text,
    st.fixed_dictionaries({}, optional=fields),
    st.lists(stage, max_size=3),
    st.dictionaries(st.sampled_from(["kl", "bits", "qa", "typo"]), valid_or_wrong(1.0, -1.0, "much"), max_size=3),
)
deep_tomls = st.builds(lambda n, open_: "a = " + open_ * n, st.integers(1, 30_000), st.sampled_from(["[", "{ b = "]))


@pytest.fixture(scope="module")
def arena_file(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz") / "arena.toml"


def assert_arena_or_one_line(path) -> None:
    try:
        assert isinstance(load_arena(str(path)), Arena)
    except UserError as error:
        assert "\n" not in str(error) and len(str(error)) < 2000, str(error)


@FUZZ
@given(content=(arena_texts | deep_tomls | st.text(max_size=300)).map(lambda text: text.encode("utf-8", "surrogatepass")) | st.binary(max_size=2000))
def test_arena_files_load_or_fail_in_one_line(content, arena_file):
    arena_file.write_bytes(content)
    assert_arena_or_one_line(arena_file)


def test_a_huge_file_and_unreadable_names_are_one_line(tmp_path):
    huge = tmp_path / "huge.toml"
    huge.write_text("# comment\n" * (MAX_FILE_BYTES // 10 + 1))
    with pytest.raises(UserError, match="arenas are at most"):
        load_arena(str(huge))
    for name in ("x" * 5000, "no\x00such"):
        with pytest.raises(UserError, match="does not exist"):
            load_arena(name)


def test_a_bad_arena_ends_evolve_with_exit_2_before_anything_starts(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text('name = "x"\ncorpus = "a\\u0000b"\n[[stages]]\nname = "s"\nwindows = 1\n')
    errors = io.StringIO()
    with contextlib.redirect_stderr(errors):
        assert main(["evolve", "--arena", str(path), "--runs", str(tmp_path / "runs")]) == 2
    assert errors.getvalue().count("\n") == 1 and "corpus: " in errors.getvalue()
    assert not (tmp_path / "runs").exists()
