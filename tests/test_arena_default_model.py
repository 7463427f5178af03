"""The default arena on the real SmolLM2-135M (slow): real matches, real failures, reproducible numbers."""

import os

import pytest

from agentqat.arena.config import load_arena
from agentqat.arena.request import MatchRequest
from agentqat.defaults import CACHE_ENV

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def workbench():
    from agentqat.arena.match import Workbench

    with pytest.MonkeyPatch.context() as patch:
        if os.environ.get("AGENTQAT_TEST_MODEL_CACHE"):
            patch.setenv(CACHE_ENV, os.environ["AGENTQAT_TEST_MODEL_CACHE"])
        yield Workbench(load_arena("smollm2-default"))


def play(workbench, weight, stage="screen", **document):
    return workbench.play(MatchRequest({"default": {"weight": weight}, **document}, stage, 0))


def test_w8_is_within_one_percent_and_w4_survives(workbench):
    w8 = play(workbench, {"bits": 8, "group_size": 64})
    w4 = play(workbench, {"bits": 4, "group_size": 64})
    assert w8.outcome == "ok" and w8.quality.perplexity < 1.01 * w8.quality.base_perplexity
    assert w4.outcome == "ok" and w8.quality.kl < w4.quality.kl < 1.0
    assert w4.cost.bits_per_weight == pytest.approx(4.3125)


def test_two_bits_everywhere_collapses_and_is_recorded(workbench):
    result = play(workbench, {"bits": 2, "group_size": 64})
    assert result.outcome == "collapse"
    assert "x the base's" in result.message and result.quality is not None


def test_same_seed_reproduces_the_numbers(workbench):
    first = play(workbench, {"bits": 3, "group_size": 32})
    workbench.cache.clear()  # quantize again from scratch
    again = play(workbench, {"bits": 3, "group_size": 32})
    assert first.quality == again.quality
