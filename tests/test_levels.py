"""The level database on a tiny real Llama: the ladder checked by the registry, builds that resume after a kill,
and DB-backed matches that give exactly the numbers of quantizing on the fly."""

import pytest

from agentqat.arena.config import Arena, Levels, Stage
from agentqat.arena.match import Workbench
from agentqat.arena.request import MatchRequest
from agentqat.errors import UserError
from agentqat.levels import build_database, ladder_configs, level_name
from agentqat.levels.database import level_file, missing_levels
from agentqat.strategy import WeightGene

LADDER = (
    WeightGene(bits=2, group_size=32, rounding="gptq"),
    WeightGene(bits=3, group_size=32, rounding="gptq"),
    WeightGene(bits=4, group_size=32, rounding="gptq"),
    WeightGene(bits=8, group_size=0, rounding="rtn"),
)


def tiny_arena(model_dir, corpus, ladder=LADDER):
    return Arena(
        name="tiny-levels", model=str(model_dir), corpus=str(corpus), window_tokens=64, calibration_windows=4,
        bits_budget=3.5, stages=(Stage(name="screen", windows=2),),
        levels=Levels(ladder=ladder) if ladder else None,
    )  # fmt: skip


@pytest.fixture(scope="module")
def benches(sensitive_llama_dir, small_corpus_file):
    with_levels = Workbench(tiny_arena(sensitive_llama_dir, small_corpus_file))
    with_levels.prepare(0)
    return with_levels, Workbench(tiny_arena(sensitive_llama_dir, small_corpus_file, ladder=None))


def test_ladder_is_checked_and_ordered_by_cost(benches):
    facts = benches[0].loaded.facts
    names = [level_name(c) for c in ladder_configs(LADDER[::-1], facts)]
    assert names == ["gptq-w2-g32-asym", "gptq-w3-g32-asym", "gptq-w4-g32-asym", "rtn-w8-g0-asym"]
    with pytest.raises(UserError, match=r"levels.ladder\[1\].*group_size 576"):
        ladder_configs((LADDER[0], WeightGene(bits=3, group_size=576)), facts)


def test_database_backed_match_equals_quantizing_on_the_fly(benches):
    database, plain = benches
    document = {
        "name": "mixed", "default": {"weight": {"bits": 3, "group_size": 32, "rounding": "gptq"}},
        "rules": [{"layers": "0", "modules": ["mlp"], "weight": {"bits": 2}},
                  {"layers": "1", "modules": ["attn"], "weight": {"bits": 8, "group_size": 0, "rounding": "rtn"}}],
    }  # fmt: skip
    levels = database.levels()
    name = next(iter(database.loaded.facts.linears)).name
    assert levels.weight(name, levels.levels[0], "another calibration") is None
    results = [bench.play(MatchRequest(document, "screen", 0)) for bench in (database, plain)]
    assert all(result.outcome == "ok" for result in results), results
    assert results[0].quality.window_kl == results[1].quality.window_kl
    assert results[0].quality.window_nll == results[1].quality.window_nll
    assert results[0].cost.bits_per_weight == results[1].cost.bits_per_weight


class _Killed(Exception):
    pass


class _KillAfter:
    """A reporter that raises (as a kill would stop the build) after `steps` steps."""

    def __init__(self, steps):
        self.steps = steps

    def phase_started(self, name, total=None, detail=""):
        self.name = name

    def phase_advanced(self, steps=1):
        self.steps -= steps
        if self.steps < 0:
            raise _Killed

    def phase_finished(self, name, seconds):
        pass


def test_a_killed_build_keeps_finished_levels_and_resumes(benches, tmp_path, monkeypatch):
    monkeypatch.setenv("AGENTQAT_CACHE_DIR", str(tmp_path))
    bench = benches[0]
    levels = ladder_configs(LADDER, bench.loaded.facts)
    calibration = bench.calibration(4)
    modules = len(bench.loaded.facts.linears)
    with pytest.raises(_Killed):
        build_database(bench.loaded.model, "tiny", calibration, levels, _KillAfter(modules + 3))
    directory = tmp_path / "levels" / f"tiny-{calibration.key}"
    assert missing_levels(directory, levels) == list(levels[1:])
    reporter = _KillAfter(10**6)
    build_database(bench.loaded.model, "tiny", calibration, levels, reporter)
    assert 10**6 - reporter.steps == modules * (len(levels) - 1)
    assert missing_levels(directory, levels) == []
    assert sorted(p.name for p in directory.glob("*.safetensors")) == sorted(level_file(c) for c in levels)


def test_levels_build_refuses_an_arena_without_a_ladder(capsys):
    from agentqat.cli import main

    assert main(["levels", "build", "--arena", "smollm2-default"]) == 2
    assert "declares no level ladder" in capsys.readouterr().err
