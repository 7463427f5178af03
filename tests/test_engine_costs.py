"""Engine costs (issue 12, item 6): a strategy's decode latency and memory under a vllm-* target are the parameter-
weighted mean of its schemes' measured figures; matches carry them, the baseline reads the engine's unquantized
figures, and the score weighs them; where the engine cannot be measured, a search that weighs them stops with one
line. The slow test measures the real vLLM CPU engine on SmolLM2 through the CLI."""

from __future__ import annotations

import json
import math

import pytest
import torch
from vllm_cpu import VLLM_CPU_W4A16

from agentqat.arena.config import Arena, ScoreWeights, Stage
from agentqat.arena.engine_costs import EngineProfile, SchemeCost, load_profile, profile_path, strategy_engine_cost
from agentqat.arena.match import Workbench
from agentqat.arena.request import MatchRequest
from agentqat.arena.result import EngineCost, MatchResult
from agentqat.arena.scoring import aggregate, composite_score
from agentqat.arena.tournament import baseline_of
from agentqat.defaults import CACHE_ENV
from agentqat.errors import UserError
from agentqat.export.measure_costs import uniform_document
from agentqat.session.resources import ensure_engine_costs
from agentqat.strategy import deploy
from agentqat.strategy.document import parse_strategy
from agentqat.strategy.resolve import resolve_strategy

W4A16 = {"schema_version": 1, "default": {"weight": {"bits": 4, "group_size": 64, "symmetric": True}}}
MIXED = {**W4A16, "rules": [{"layers": "20-29", "weight": {"bits": 8, "group_size": 0}, "activation": {"bits": 8}}]}
ASYMMETRIC = {"schema_version": 1, "default": {"weight": {"bits": 4, "group_size": 64, "symmetric": False}}}
HALF = {**W4A16, "rules": [{"layers": "0-1", "weight": {"bits": 16}}]}


def profile(model: str = "smollm2-135m") -> EngineProfile:
    def cost(ms: float, gib: float) -> SchemeCost:
        return SchemeCost(config="", decode_ms_per_token=ms, first_token_s=0.1, peak_memory_bytes=int(gib * 2**30), weight_bytes=1)

    schemes = {"bf16": cost(20.0, 4.0), "W4A16": cost(26.0, 3.5), "W8A8": cost(17.0, 3.7)}
    return EngineProfile("vllm-cpu", model, "key", "0.32.0", 1, "2026-12-02T00:00:00", schemes)


def engine_cost(document: dict, facts) -> EngineCost | None:
    return strategy_engine_cost(resolve_strategy(parse_strategy(document), facts), facts, profile())


def test_a_uniform_strategy_costs_its_schemes_figures(smollm2_shaped_facts):
    cost = engine_cost(W4A16, smollm2_shaped_facts)
    assert cost.decode_ms_per_token == pytest.approx(26.0) and cost.peak_memory_bytes == pytest.approx(3.5 * 2**30, abs=1)
    assert (cost.base_decode_ms_per_token, cost.base_peak_memory_bytes) == (20.0, 4 * 2**30)


def test_a_mixed_strategy_costs_the_parameter_weighted_mean(smollm2_shaped_facts):
    # layers 0-19 W4A16, 20-29 W8A8: every layer has the same parameters, so the shares are 2/3 and 1/3
    assert engine_cost(MIXED, smollm2_shaped_facts).decode_ms_per_token == pytest.approx(26.0 * 2 / 3 + 17.0 / 3)
    # 16-bit modules run as bf16
    assert engine_cost(HALF, smollm2_shaped_facts).decode_ms_per_token == pytest.approx(20.0 * 2 / 30 + 26.0 * 28 / 30)


def test_a_strategy_the_engine_cannot_run_or_an_unmeasured_scheme_has_no_engine_cost(smollm2_shaped_facts):
    assert engine_cost(ASYMMETRIC, smollm2_shaped_facts) is None
    partial = profile()
    del partial.schemes["W8A8"]
    resolved = resolve_strategy(parse_strategy(MIXED), smollm2_shaped_facts)
    assert strategy_engine_cost(resolved, smollm2_shaped_facts, partial) is None


@pytest.mark.parametrize("target", ["vllm-cpu", "vllm-cuda"])
def test_the_measured_uniform_models_are_servable_and_one_per_scheme(smollm2_shaped_facts, target):
    table = deploy.TARGETS[target]
    for scheme in table.schemes:
        document = uniform_document(table, scheme, smollm2_shaped_facts)
        resolved = resolve_strategy(parse_strategy(document), smollm2_shaped_facts)
        assert deploy.problems(resolved, smollm2_shaped_facts, target) == []
        assert {table.scheme_of(config).name for config in resolved.modules.values()} == {scheme.name}


def test_the_profile_round_trips_through_its_cache_file(tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path))
    original = profile()
    path = profile_path("vllm-cpu", original.model)
    path.parent.mkdir(parents=True)
    path.write_text(original.to_json())
    assert load_profile("vllm-cpu", original.model) == original
    assert load_profile("vllm-cuda", original.model) is None and load_profile("any", original.model) is None


def _result(strategy_id: str, window_set: int, ms: float | None, gib: float = 3.5) -> MatchResult:
    engine = None if ms is None else {"target": "vllm-cpu", "decode_ms_per_token": ms, "peak_memory_bytes": int(gib * 2**30),
                                      "base_decode_ms_per_token": 20.0, "base_peak_memory_bytes": 4 * 2**30}  # fmt: skip
    return MatchResult.from_dict({
        "strategy_id": strategy_id, "strategy_name": strategy_id, "arena": "a", "stage": "s", "seed": 0,
        "window_set": window_set, "tokens": 8, "outcome": "ok", "schema_version": 1,
        "quality": {"perplexity": 11.0, "kl": 0.1, "top1": 0.9, "window_nll": [math.log(11.0)], "window_kl": [0.1],
                    "base_perplexity": 10.0},
        "cost": {"bits_per_weight": 4.25, "model_bytes": 1, "bytes_per_token": 1, "peak_memory_bytes": 1,
                 "simulated_latency_ms_per_token": 1.0, "quantize_seconds": 0.0, "evaluate_seconds": 0.0, "engine": engine},
    })  # fmt: skip


def test_the_score_weighs_engine_latency_and_memory_against_the_unquantized_models():
    results = [_result("slow", 0, 30.0), _result("slow", 1, 30.0)]
    assert MatchResult.from_dict(json.loads(results[0].to_json())) == results[0]
    base = baseline_of(results)
    assert (base.latency_ms_per_token, base.memory_bytes) == (20.0, 4 * 2**30)
    agg = aggregate(results)
    assert (agg.engine_ms_per_token, agg.engine_memory_bytes) == (30.0, int(3.5 * 2**30))
    plain = composite_score(agg, base, ScoreWeights(), bits_budget=4.5)
    weighted = composite_score(agg, base, ScoreWeights(latency=1.0, memory=2.0), bits_budget=4.5)
    assert weighted - plain == pytest.approx(-(30.0 / 20.0 - 1) - 2.0 * (3.5 / 4.0 - 1))
    unmeasured = aggregate([_result("x", 0, None)])
    assert composite_score(unmeasured, base, ScoreWeights(latency=1.0), 4.5) == composite_score(unmeasured, base, ScoreWeights(), 4.5)


def test_a_match_under_a_measured_target_carries_the_engine_cost(tiny_llama_dir, small_corpus_file, tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path))
    model = str(tiny_llama_dir)
    arena = Arena(name="tiny-engine", model=model, corpus=str(small_corpus_file), window_tokens=64, calibration_windows=2,
                  deploy="vllm-cpu", stages=(Stage(name="screen", windows=2),))  # fmt: skip
    path = profile_path("vllm-cpu", model)
    path.parent.mkdir(parents=True)
    path.write_text(profile(model).to_json())
    workbench = Workbench(arena)
    played = workbench.play(MatchRequest(W4A16, "screen", arena.seed))
    assert played.outcome == "ok", played.message
    expected = strategy_engine_cost(resolve_strategy(parse_strategy(W4A16), workbench.loaded.facts), workbench.loaded.facts, profile(model))
    assert played.cost.engine == expected and expected.decode_ms_per_token == pytest.approx(26.0)
    assert Workbench(arena.model_copy(update={"deploy": "any"})).play(MatchRequest(W4A16, "screen", arena.seed)).cost.engine is None


def test_a_search_that_weighs_costs_this_machine_cannot_measure_stops_with_one_line(tmp_path, monkeypatch):
    if torch.cuda.is_available():
        pytest.skip("this machine runs vllm-cuda")
    monkeypatch.setenv(CACHE_ENV, str(tmp_path))
    stages = (Stage(name="screen", windows=2),)
    weighed = Arena(name="cuda-latency", deploy="vllm-cuda", score=ScoreWeights(latency=0.5), stages=stages)
    with pytest.raises(UserError) as caught:
        ensure_engine_costs(weighed)
    assert "weighs engine latency or memory" in str(caught.value) and "agentqat engine-costs --deploy vllm-cuda" in caught.value.fix
    ensure_engine_costs(weighed.model_copy(update={"score": ScoreWeights()}))  # not weighed: a note, no error


def test_a_cpu_without_avx512_lacks_vllms_w4a16_kernel_and_says_so_before_serving(tmp_path, monkeypatch, smollm2_shaped_facts):
    monkeypatch.setattr(deploy, "cpu_has_avx512", lambda: False)
    monkeypatch.setattr(deploy.platform, "machine", lambda: "x86_64")
    assert set(deploy.missing_kernels("vllm-cpu")) == {"W4A16"} and deploy.missing_kernels("gguf") == {}
    mixed = resolve_strategy(parse_strategy(MIXED), smollm2_shaped_facts)
    assert set(deploy.missing_here(mixed.modules.values(), "vllm-cpu")) == {"W4A16"}
    eight = parse_strategy({"schema_version": 1, "default": {"weight": {"bits": 8, "group_size": 0}, "activation": {"bits": 8}}})
    assert deploy.missing_here(resolve_strategy(eight, smollm2_shaped_facts).modules.values(), "vllm-cpu") == {}
    assert deploy.missing_here(mixed.modules.values(), "any") == {}
    pytest.importorskip("vllm")
    monkeypatch.setenv(CACHE_ENV, str(tmp_path))
    weighed = Arena(name="cpu-latency", deploy="vllm-cpu", score=ScoreWeights(latency=0.5), stages=(Stage(name="screen", windows=2),))
    with pytest.raises(UserError) as caught:
        ensure_engine_costs(weighed)  # stops before any server starts, naming the kernel
    assert "W4A16 cannot be served here" in str(caught.value) and "cpu_gemm_wna16" in str(caught.value)
    monkeypatch.setattr(deploy, "cpu_has_avx512", lambda: True)
    assert deploy.missing_kernels("vllm-cpu") == {}


@pytest.mark.slow
@VLLM_CPU_W4A16
def test_engine_costs_are_measured_on_the_real_vllm_cpu_engine_and_cached(capsys):
    pytest.importorskip("vllm")
    from agentqat.cli import main

    assert main(["engine-costs", "--deploy", "vllm-cpu", "--arena", "smollm2-default", "--remeasure"]) == 0
    measured = load_profile("vllm-cpu", "smollm2-135m")
    assert set(measured.schemes) == {"bf16", "W4A16", "W8A8"}
    for cost in measured.schemes.values():
        assert cost.decode_ms_per_token > 0 and cost.first_token_s > 0 and cost.peak_memory_bytes > 2**28
    weights = {name: cost.weight_bytes for name, cost in measured.schemes.items()}
    assert weights["W4A16"] < weights["W8A8"] < weights["bf16"]
    assert "W4A16" in capsys.readouterr().out


def test_the_leaderboard_shows_engine_costs_where_rows_carry_them(capsys):
    from agentqat.arena.scoring import leaderboard
    from agentqat.ui import print_leaderboard

    base = baseline_of([_result("fast", 0, 15.0)])
    rows = leaderboard([("fast", aggregate([_result("fast", 0, 15.0, gib=3.25)]))], base, ScoreWeights(), 4.5)
    print_leaderboard(rows, "with engine costs")
    shown = capsys.readouterr().out
    assert "engine ms/tok" in shown and "15.00" in shown and "3.25" in shown
    print_leaderboard(leaderboard([("x", aggregate([_result("x", 0, None)]))], base, ScoreWeights(), 4.5), "without")
    assert "engine" not in capsys.readouterr().out
