"""The arena on a tiny real Llama: matches, failure outcomes, reproducibility, staging, Ray workers, resume."""

import json
import math

import pytest

from agentqat.arena.baselines import baseline_requests
from agentqat.arena.config import Arena, Stage, load_arena
from agentqat.arena.match import Workbench, verdict
from agentqat.arena.recorded import RecordedPlayer
from agentqat.arena.request import MatchRequest
from agentqat.arena.result import MatchResult, Quality
from agentqat.arena.tournament import play_tournament
from agentqat.errors import UserError
from agentqat.rundir.store import RunStore


@pytest.fixture(scope="module")
def arena(sensitive_llama_dir, small_corpus_file):
    return Arena(
        name="tiny",
        model=str(sensitive_llama_dir),
        corpus=str(small_corpus_file),
        window_tokens=64,
        calibration_windows=4,
        bits_budget=5.0,
        collapse_ratio=10.0,
        stages=(Stage(name="screen", windows=2, promote=0.5), Stage(name="confirm", windows=2, window_sets=3, cloze=True, qa=True)),
    )


@pytest.fixture(scope="module")
def workbench(arena):
    return Workbench(arena)


def play(workbench, document, stage="screen", seed=0, window_set=0):
    return workbench.play(MatchRequest(document, stage, seed, window_set))


W4 = {"name": "w4", "default": {"weight": {"bits": 4, "group_size": 32}}}


def test_a_match_measures_quality_and_cost(workbench):
    result = play(workbench, W4)
    assert result.outcome == "ok", result.message
    assert result.quality.perplexity > result.quality.base_perplexity * 0.5
    assert result.quality.kl > 0 and 0 < result.quality.top1 <= 1
    assert len(result.quality.window_nll) == 2
    assert result.cost.bits_per_weight == pytest.approx(4 + 20 / 32)
    assert result.cost.model_bytes > 0 and result.cost.peak_memory_bytes > 0
    assert result.tokens == 128 and result.seed == 0


def test_same_seed_same_numbers_other_seed_other_windows(workbench):
    first, again = play(workbench, W4, seed=3), play(workbench, W4, seed=3)
    assert first.quality == again.quality
    assert play(workbench, W4, seed=4).quality.window_nll != first.quality.window_nll


def test_results_round_trip_through_json(workbench):
    result = play(workbench, W4)
    assert MatchResult.from_dict(json.loads(result.to_json())) == result


@pytest.mark.parametrize(
    "document, outcome, message",
    [
        ({"default": {"weight": {"bits": 7}}}, "invalid", "default.weight.bits"),
        ({"default": {"weight": {"group_size": 96}}}, "invalid", "does not divide"),
        ("not a document", "invalid", "must be a JSON object"),
    ],
    ids=["bad-bits", "bad-group", "not-a-dict"],
)
def test_failures_are_recorded_outcomes(workbench, document, outcome, message):
    result = play(workbench, document)
    assert result.outcome == outcome and message in result.message
    assert result.failed


def quality(perplexity, base=10.0):
    return Quality(perplexity=perplexity, kl=0.1, top1=0.9, window_nll=(1.0,), window_kl=(0.1,), base_perplexity=base)


@pytest.mark.parametrize(
    "finite, overflowed, perplexity, degenerate, expected",
    [
        (True, [], 12.0, 0.0, ("ok", "")),
        (True, [], 99.0, 0.0, ("ok", "")),
        (True, [], 101.0, 0.0, ("collapse", "perplexity 101.0 is 10.1x the base's 10.0")),
        (True, [], 12.0, 0.6, ("collapse", "60% of the answers loop on one or two tokens")),
        (True, [], 12.0, 0.5, ("ok", "")),
        (False, [], math.inf, 0.0, ("nan", "NaN or Inf in the logits")),
        (False, ["model.layers.3.mlp.down_proj"], math.inf, 0.0, ("overflow", "fp16 overflow (inf/NaN) in 1 linear outputs, first model.layers.3.mlp.down_proj")),
    ],
    ids=["ok", "just-below-collapse", "collapse", "degenerate", "half-degenerate", "nan", "overflow-first"],
)
def test_verdicts(finite, overflowed, perplexity, degenerate, expected):
    assert verdict(finite, overflowed, quality(perplexity), 10.0, degenerate) == expected


def test_fp16_overflow_is_detected(workbench):
    # Scaling one layer's weights far beyond fp16's range makes its fp16 product overflow.
    model = workbench.loaded.model
    linear = model.get_submodule("model.layers.0.mlp.down_proj")
    original = linear.weight.data.clone()
    linear.weight.data.mul_(1e6)
    try:
        result = play(workbench, {"default": {"weight": {"bits": 8, "group_size": 32}}, "arithmetic": {"compute_dtype": "fp16"}})
    finally:
        linear.weight.data.copy_(original)
        workbench.cache.clear()
    assert result.outcome == "overflow", result
    assert "model.layers.0.mlp.down_proj" in result.message


def test_confirm_stage_runs_tasks_on_disjoint_windows(workbench):
    screen = play(workbench, W4, "screen")
    sets = [play(workbench, W4, "confirm", window_set=k) for k in range(3)]
    assert all(r.outcome == "ok" for r in sets)
    nlls = [screen.quality.window_nll] + [r.quality.window_nll for r in sets]
    assert len({tuple(n) for n in nlls}) == 4
    assert sets[0].quality.cloze_accuracy is not None
    assert sets[1].quality.cloze_accuracy is None and sets[2].quality.cloze_accuracy is None  # tasks run once


def test_layer_cache_hits_on_a_repeated_config(workbench):
    play(workbench, W4)
    again = play(workbench, {**W4, "name": "renamed"})
    assert again.cache_hits == 14 and again.cache_misses == 0


def test_staged_tournament_promotes_half_and_keeps_every_stage(workbench, arena):
    documents = [{"name": f"w{b}", "default": {"weight": {"bits": b, "group_size": 32}}} for b in (8, 6, 5, 4)]
    requests = [MatchRequest(d, "screen", 0) for d in documents]
    outcome = play_tournament(lambda rs: [workbench.play(r) for r in rs], arena, requests, seed=0)
    assert [s.stage for s in outcome.stages] == ["screen", "confirm"]
    assert len(outcome.stages[0].rows) == 4
    survivors = [r for r in outcome.stages[0].rows if r.survives]
    assert len(outcome.stages[0].promoted) == math.ceil(len(survivors) / 2)
    assert len(outcome.results) == 4 + 3 * len(outcome.stages[0].promoted)
    assert all(r.aggregate.n_sets == 3 for r in outcome.final.rows)
    assert outcome.final.rows[0].aggregate.kl_ci is not None
    over = [r for r in outcome.stages[0].rows if r.aggregate.strategy_name == "w8"][0]
    assert not over.survives and "over budget" in over.reason


def test_recorded_player_resumes_without_replaying(workbench, tmp_path):
    store = RunStore.create(tmp_path / "run", {"kind": "test"})
    played = []

    def run(requests, record, on_start=None):
        for request in requests:
            played.append(request)
            record(workbench.play(request))

    requests = [MatchRequest(W4, "screen", 0), MatchRequest({"default": {"weight": {"bits": 8}}}, "screen", 0)]
    first = RecordedPlayer(run, store)(requests[:1])
    with open(tmp_path / "run" / "results.jsonl", "a") as handle:
        handle.write('{"truncated by a kill')
    resumed = RecordedPlayer(run, RunStore.open(tmp_path / "run"))
    results = resumed(requests)
    assert len(played) == 2 and resumed.replayed == 1
    assert results[0] == first[0]
    assert len(RunStore.open(tmp_path / "run").read("results")) == 2


def test_baseline_matrix_requests():
    requests = baseline_requests("screen", 0, bits=(8, 4), budgets=(4, 16))
    names = [r.document["name"] for r in requests]
    assert "gptq-w4-cal16" in names and "rtn-w4" in names and "nf4-w4" in names and "llm-int8-w8-cal4" in names
    assert "nf4-w8" not in names and "rtn-w3" not in names
    assert len(set(names)) == len(names)


def test_packaged_arena_loads_and_bad_arenas_are_clear(tmp_path):
    arena = load_arena()
    assert arena.model == "smollm2-135m" and arena.stages[-1].window_sets >= 3
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "x"\nstages = [{name = "s", windows = 0}]\nscore = {kl = "high"}\n')
    with pytest.raises(UserError, match="stages.0.windows"):
        load_arena(str(bad))
    bad.write_text("name = \n")
    with pytest.raises(UserError, match="not valid TOML"):
        load_arena(str(bad))
    with pytest.raises(UserError, match="does not exist"):
        load_arena("no-such-arena")


def test_an_arena_on_another_model_quantizes_on_the_fly_without_its_file_budget():
    arena = load_arena("smollm2-gguf-gptq")
    moved = arena.on_model("gemma3-270m")
    assert (moved.model, moved.levels, moved.engine.file_bytes) == ("gemma3-270m", None, None)
    assert moved.engine.embedding == arena.engine.embedding and moved.stages == arena.stages
    same = arena.on_model(arena.model)
    assert same.levels is None and same.engine.file_bytes == arena.engine.file_bytes
    assert arena.on_model("gemma3-270m", keep_levels=True).levels == arena.levels


def test_the_gemma_gguf_arena_is_the_smollm2_one_on_gemma_with_gemmas_stock_file_as_budget():
    smollm2, gemma = load_arena("smollm2-gguf-gptq"), load_arena("gemma3-gguf-gptq")
    same = smollm2.on_model("gemma3-270m", keep_levels=True)
    assert gemma.model_copy(update={"name": same.name, "source": same.source, "engine": same.engine}) == same
    assert gemma.engine.file_bytes == 241_409_056 and gemma.engine.embedding == smollm2.engine.embedding
