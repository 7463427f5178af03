"""Scoring: aggregation over window sets, the composite score, survival, Pareto ranks, leaderboard and promotion."""

import json
import math
import random
from dataclasses import replace

import pytest

from agentqat.arena.config import ScoreWeights
from agentqat.arena.result import FAILURES, Cost, MatchResult, Quality
from agentqat.arena.scoring import (
    SEVERITY,
    Aggregate,
    Baseline,
    Ranked,
    aggregate,
    composite_score,
    confidence_interval,
    leaderboard,
    pareto_ranks,
    promote,
    survives,
    t_quantile_975,
)

T2 = 4.302652730  # t(0.975, 2): three window sets


def result(window_set=0, outcome="ok", nll=(2.0, 2.0), kl=(0.1, 0.1), top1=0.9, cloze=None, qa=None, bits=4.25,
           latency=2.0, seed=0, strategy_id="s1", stage="confirm", message=""):  # fmt: skip
    quality = Quality(perplexity=8.0, kl=0.1, top1=top1, window_nll=tuple(nll), window_kl=tuple(kl),
                      base_perplexity=7.0, cloze_accuracy=cloze, qa_exact_match=qa)  # fmt: skip
    cost = Cost(bits_per_weight=bits, model_bytes=1000, bytes_per_token=100, peak_memory_bytes=2000,
                simulated_latency_ms_per_token=latency, quantize_seconds=1.0, evaluate_seconds=1.0)
    measured = outcome == "ok"
    return MatchResult(strategy_id, "name", "arena", stage, seed, window_set, 1024, outcome, message,
                       quality if measured else None, cost if measured else None)  # fmt: skip


def agg(kl=0.1, perplexity=12.0, bits=4.25, latency=2.0, memory=1500, cloze=None, qa=None, outcome="ok", message=""):
    """An aggregate; `latency` and `memory` are the engine's (decode ms per token, peak bytes). A collapse keeps
    its metrics (it was measured), other failures have none."""
    ok = outcome in ("ok", "collapse")
    return Aggregate("s", "name", "arena", "confirm", outcome, message, 1, (0,), (0,), 1024,
                     perplexity=perplexity if ok else None, kl=kl if ok else None, top1=0.9 if ok else None,
                     cloze_accuracy=cloze, qa_exact_match=qa, bits_per_weight=bits if ok else None,
                     simulated_latency_ms_per_token=3.0 if ok else None, engine_ms_per_token=latency if ok else None,
                     engine_memory_bytes=memory if ok else None)  # fmt: skip


# --- aggregation ---------------------------------------------------------------------------------------------------


def three_sets():
    return [
        result(0, nll=(2.0, 2.2), kl=(0.1, 0.3), top1=0.9, cloze=0.5, qa=0.4, latency=1.0),
        result(1, nll=(2.2, 2.2), kl=(0.2, 0.2), top1=0.8, cloze=None, qa=0.6, latency=2.0),
        result(2, nll=(2.3, 2.5), kl=(0.3, 0.5), top1=0.7, cloze=0.7, qa=0.5, latency=3.0),
    ]


@pytest.mark.parametrize(
    "field, expected",
    [
        ("outcome", "ok"),
        ("n_sets", 3),
        ("window_sets", (0, 1, 2)),
        ("seeds", (0,)),
        ("tokens", 3 * 1024),
        ("perplexity", math.exp(13.4 / 6)),  # exp of the mean NLL over all six windows, not the mean set perplexity
        ("kl", 0.8 / 3),
        ("kl_ci", (0.8 / 3 - T2 * 0.2 / 3, 0.8 / 3 + T2 * 0.2 / 3)),  # set means 0.2, 0.2, 0.4: s / sqrt(3) = 0.2 / 3
        # set mean NLLs 2.1, 2.2, 2.4: s / sqrt(3) = sqrt(0.07) / 3, exponentiated
        ("perplexity_ci", (math.exp(6.7 / 3 - T2 * math.sqrt(0.07) / 3), math.exp(6.7 / 3 + T2 * math.sqrt(0.07) / 3))),
        ("top1", 0.8),
        ("cloze_accuracy", 0.6),  # the sets that report cloze
        ("qa_exact_match", 0.5),
        ("bits_per_weight", 4.25),
        ("simulated_latency_ms_per_token", 2.0),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_aggregate_over_three_sets(field, expected):
    assert getattr(aggregate(three_sets()), field) == pytest.approx(expected)


def test_aggregate_does_not_depend_on_result_order():
    results = three_sets()
    assert aggregate(results) == aggregate(results[::-1])


def test_top1_is_weighted_by_window_count():
    results = [result(0, nll=(2.0,) * 2, kl=(0.1,) * 2, top1=0.9), result(1, nll=(2.0,) * 4, kl=(0.1,) * 4, top1=0.6)]
    assert aggregate(results).top1 == pytest.approx((2 * 0.9 + 4 * 0.6) / 6)


def kl_ci_width(spread):
    sets = [result(i, kl=(0.2 + d, 0.2 + d)) for i, d in enumerate((-spread, 0.0, spread))]
    low, high = aggregate(sets).kl_ci
    return high - low


def test_ci_shrinks_as_sets_agree():
    widths = [kl_ci_width(spread) for spread in (0.1, 0.03, 0.01, 0.0)]
    assert widths[0] > widths[1] > widths[2] > widths[3]
    assert widths[3] == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("field", ["kl_ci", "perplexity_ci"])
def test_one_set_has_no_ci(field):
    assert getattr(aggregate([result(0)]), field) is None


@pytest.mark.parametrize(
    "df, expected",
    [
        (1, 12.706204736),
        (2, T2),
        (7, 2.364624252),
        (8, 2.306004135),
        (30, 2.042272456),  # the last tabulated
        (40, 2.021075),  # Cornish-Fisher from here on
        (60, 2.000298),
        (120, 1.979930),
    ],
    ids=lambda v: f"df{v}" if isinstance(v, int) else None,
)
def test_t_quantile(df, expected):
    assert t_quantile_975(df) == pytest.approx(expected, abs=2e-6)


def test_confidence_interval_of_fewer_than_two_values_is_none():
    assert confidence_interval([0.3]) is None


# --- failures ------------------------------------------------------------------------------------------------------


def test_every_failure_has_a_severity():
    assert sorted(SEVERITY) == sorted(FAILURES)


@pytest.mark.parametrize(
    "outcomes, expected",
    [
        (("ok", "ok", "ok"), "ok"),
        (("ok", "nan", "collapse"), "nan"),
        (("collapse", "error", "timeout"), "error"),
        (("nan", "timeout", "ok"), "timeout"),
        (("overflow", "nan"), "nan"),
        (("collapse", "overflow"), "overflow"),
        (("invalid", "collapse"), "collapse"),
        (("ok", "invalid"), "invalid"),
    ],
    ids=lambda v: "+".join(v) if isinstance(v, tuple) else v,
)
def test_failure_precedence(outcomes, expected):
    results = [result(i, outcome=o, message=f"set {i} {o}") for i, o in enumerate(outcomes)]
    combined = aggregate(results)
    assert combined.outcome == expected
    assert combined.message == ("" if expected == "ok" else f"set {outcomes.index(expected)} {expected}")


def test_failed_aggregate_carries_the_earliest_set_of_the_worst_failure_and_no_metrics():
    results = [result(2, outcome="nan", message="late"), result(1, outcome="nan", message="early"), result(0)]
    combined = aggregate(results)
    assert (combined.outcome, combined.message, combined.kl, combined.bits_per_weight) == ("nan", "early", None, None)


def test_a_measured_collapse_keeps_its_metrics_but_never_survives_or_scores():
    collapsed = [replace(result(i, kl=(4.0, 6.0)), outcome="collapse", message="too far") for i in range(2)]
    combined = aggregate(collapsed)
    assert (combined.outcome, combined.kl, combined.bits_per_weight) == ("collapse", 5.0, 4.25)  # parents while none survives
    assert composite_score(combined, Baseline(perplexity=7.0), ScoreWeights(), 4.5) == -math.inf
    assert aggregate([collapsed[0], result(1, outcome="nan")]).kl is None  # a NaN set leaves nothing measured


@pytest.mark.parametrize(
    "results, complaint",
    [
        ([], "zero"),
        ([result(0, strategy_id="a"), result(1, strategy_id="b")], "strategy_id"),
        ([result(0, stage="screen"), result(1, stage="confirm")], "stage"),
        ([result(0), result(0)], "repeat"),
        ([result(0, bits=4.25), result(1, bits=4.5)], "bits per weight differ"),
        ([replace(result(0), quality=replace(result(0).quality, window_nll=(), window_kl=()))], "lacks"),
    ],
    ids=["empty", "two-strategies", "two-stages", "repeated-set", "bits-differ", "no-windows"],
)
def test_aggregate_rejects_inconsistent_results(results, complaint):
    with pytest.raises(ValueError, match=complaint):
        aggregate(results)


def test_aggregate_is_json_ready():
    data = json.loads(json.dumps(aggregate(three_sets()).to_dict(), allow_nan=False))
    assert (data["kl"], data["window_sets"], data["outcome"]) == (pytest.approx(0.8 / 3), [0, 1, 2], "ok")


# --- composite score -----------------------------------------------------------------------------------------------

WEIGHTS = ScoreWeights(kl=1.0, perplexity=0.5, bits=0.5, latency=0.25, memory=0.2, cloze=0.5, qa=0.5)
FULL_BASE = Baseline(perplexity=10.0, cloze_accuracy=0.6, qa_exact_match=0.5, latency_ms_per_token=1.0, memory_bytes=1000)
# -0.1 - 0.5 ln(12/10) - 0.5 (4.25/4.5) - 0.25 (2/1 - 1) - 0.2 (1500/1000 - 1) + 0.5 (0.5 - 0.6) + 0.5 (0.4 - 0.5);
# the simulated latency (3.0) is not scored
FULL_SCORE = -0.1 - 0.0911607784 - 0.4722222222 - 0.25 - 0.1 - 0.05 - 0.05


def test_score_matches_the_hand_computed_example():
    score = composite_score(agg(cloze=0.5, qa=0.4), FULL_BASE, WEIGHTS, bits_budget=4.5)
    assert score == pytest.approx(-1.1133830006, abs=1e-9)
    assert score == pytest.approx(FULL_SCORE, abs=1e-9)


@pytest.mark.parametrize(
    "aggregate_kwargs, base, dropped",
    [
        ({"cloze": None, "qa": 0.4}, FULL_BASE, -0.05),
        ({"cloze": 0.5, "qa": None}, FULL_BASE, -0.05),
        ({"cloze": None, "qa": None}, FULL_BASE, -0.1),
        ({"cloze": 0.5, "qa": 0.4}, Baseline(10.0, None, 0.5, 1.0, 1000), -0.05),
        ({"cloze": 0.5, "qa": 0.4}, Baseline(10.0, 0.6, None, 1.0, 1000), -0.05),
        ({"cloze": 0.5, "qa": 0.4}, Baseline(10.0, 0.6, 0.5, None, 1000), -0.25),
        ({"cloze": 0.5, "qa": 0.4, "latency": None}, FULL_BASE, -0.25),
        ({"cloze": 0.5, "qa": 0.4}, Baseline(10.0, 0.6, 0.5, 1.0, None), -0.1),
        ({"cloze": 0.5, "qa": 0.4, "memory": None}, FULL_BASE, -0.1),
        ({"cloze": None, "qa": None}, Baseline(10.0), -0.45),
    ],
    ids=["no-cloze", "no-qa", "no-cloze-no-qa", "no-base-cloze", "no-base-qa", "no-base-latency", "no-latency",
         "no-base-memory", "no-memory", "base-perplexity-only"],  # fmt: skip
)
def test_missing_metrics_drop_their_terms(aggregate_kwargs, base, dropped):
    score = composite_score(agg(**aggregate_kwargs), base, WEIGHTS, bits_budget=4.5)
    assert score == pytest.approx(FULL_SCORE - dropped, abs=1e-9)


@pytest.mark.parametrize("outcome", FAILURES)
def test_failed_aggregate_scores_minus_infinity(outcome):
    assert composite_score(agg(outcome=outcome), FULL_BASE, WEIGHTS, bits_budget=4.5) == -math.inf


@pytest.mark.parametrize(
    "better, worse",
    [
        (agg(kl=0.05), agg(kl=0.1)),
        (agg(perplexity=11.0), agg(perplexity=12.0)),
        (agg(bits=4.0), agg(bits=4.25)),
        (agg(latency=1.5), agg(latency=2.0)),
        (agg(cloze=0.55), agg(cloze=0.5)),
        (agg(qa=0.45), agg(qa=0.4)),
    ],
    ids=["kl", "perplexity", "bits", "latency", "cloze", "qa"],
)
def test_higher_score_is_better(better, worse):
    assert composite_score(better, FULL_BASE, WEIGHTS, 4.5) > composite_score(worse, FULL_BASE, WEIGHTS, 4.5)


@pytest.mark.parametrize("base_kwargs", [{"perplexity": 0.0}, {"perplexity": 10.0, "latency_ms_per_token": 0.0}])
def test_baseline_rejects_non_positive_denominators(base_kwargs):
    with pytest.raises(ValueError, match="positive"):
        Baseline(**base_kwargs)


# --- survival ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "aggregate_, expected",
    [
        (agg(bits=4.25), (True, "")),
        (agg(bits=4.5), (True, "")),
        (agg(bits=4.5 + 1e-10), (True, "")),
        (agg(bits=4.62), (False, "over budget: 4.62 > 4.50 bits")),
        (agg(outcome="nan", message="logits are nan"), (False, "nan: logits are nan")),
        (agg(outcome="collapse", message="perplexity 812"), (False, "collapse: perplexity 812")),
        (agg(outcome="timeout"), (False, "timeout")),
    ],
    ids=["under", "at-budget", "within-tolerance", "over", "nan", "collapse", "timeout-no-message"],
)
def test_survives(aggregate_, expected):
    assert survives(aggregate_, bits_budget=4.5) == expected


# --- Pareto ranks --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "points, expected",
    [
        ([], []),
        ([(0.1, 4.0)], [0]),
        ([(3, 3), (1, 1), (2, 2)], [2, 0, 1]),  # a dominated chain
        ([(1, 3), (2, 2), (3, 1)], [0, 0, 0]),  # a trade-off front
        ([(1, 1), (2, 2), (1, 1)], [0, 1, 0]),  # duplicates share a rank
        ([(1, 2), (1, 3), (2, 2)], [0, 1, 1]),  # equal in one coordinate, worse in the other
        ([(0.1, 4), (0.2, 3), (0.15, 4.5), (0.3, 3), (0.3, 3.5), (0.05, 5)], [0, 0, 1, 1, 2, 0]),
    ],
    ids=["empty", "single", "chain", "front", "duplicates", "ties", "mixed"],
)
def test_pareto_ranks(points, expected):
    assert pareto_ranks(points) == expected


# --- leaderboard and promotion -------------------------------------------------------------------------------------

ENTRIES = [
    ("e-failed", agg(outcome="nan", message="nan")),
    ("d-over-budget", agg(kl=0.01, bits=5.0)),
    ("c-best", agg(kl=0.02, bits=4.0)),
    ("b-tie", agg(kl=0.1, bits=4.25)),
    ("a-tie", agg(kl=0.1, bits=4.25)),
    ("f-dominated", agg(kl=0.2, bits=4.5)),
    ("a-collapse-far", agg(kl=6.0, outcome="collapse", message="perplexity 9000")),
    ("z-collapse-near", agg(kl=4.0, outcome="collapse", message="perplexity 2000")),
]
EXPECTED = [  # (id, survives, pareto rank): survivors by score, the tie broken by id, then the rest by score,
    ("c-best", True, 0),  # collapses by KL, failures without a KL last
    ("a-tie", True, 1),
    ("b-tie", True, 1),
    ("f-dominated", True, 2),
    ("d-over-budget", False, None),
    ("z-collapse-near", False, None),
    ("a-collapse-far", False, None),
    ("e-failed", False, None),
]


@pytest.mark.parametrize("seed", range(5))
def test_leaderboard_order_does_not_depend_on_input_order(seed):
    entries = random.Random(seed).sample(ENTRIES, len(ENTRIES))
    rows = leaderboard(entries, FULL_BASE, WEIGHTS, bits_budget=4.5)
    assert [(r.strategy_id, r.survives, r.pareto_rank) for r in rows] == EXPECTED
    assert [r.rank for r in rows] == list(range(1, len(ENTRIES) + 1))


def test_leaderboard_rows_carry_score_and_reason():
    rows = {r.strategy_id: r for r in leaderboard(ENTRIES, FULL_BASE, WEIGHTS, bits_budget=4.5)}
    assert rows["c-best"].score == pytest.approx(composite_score(ENTRIES[2][1], FULL_BASE, WEIGHTS, 4.5))
    assert (rows["d-over-budget"].reason, rows["e-failed"].reason) == ("over budget: 5.00 > 4.50 bits", "nan: nan")
    assert rows["e-failed"].score == -math.inf


def test_leaderboard_rejects_repeated_ids():
    with pytest.raises(ValueError, match="repeat"):
        leaderboard([("a", agg()), ("a", agg())], FULL_BASE, WEIGHTS, bits_budget=4.5)


def rows(survivors, failures):
    alive = [Ranked(i + 1, f"s{i}", -i, True, "", 0, agg()) for i in range(survivors)]
    dead = [Ranked(survivors + i + 1, f"f{i}", -math.inf, False, "nan", None, agg(outcome="nan"))
            for i in range(failures)]  # fmt: skip
    return alive + dead


@pytest.mark.parametrize(
    "survivors, failures, fraction, expected",
    [
        (5, 0, 0.5, 3),
        (0, 3, 0.5, 0),
        (0, 0, 1.0, 0),
        (4, 2, 0.5, 2),
        (1, 0, 0.1, 1),
        (3, 0, 0.01, 1),
        (25, 0, 0.28, 7),  # 0.28 x 25 is 7.000000000000001 in floating point
        (10, 5, 1.0, 10),
    ],
    ids=lambda v: str(v),
)
def test_promote_counts(survivors, failures, fraction, expected):
    assert promote(rows(survivors, failures), fraction) == [f"s{i}" for i in range(expected)]


@pytest.mark.parametrize("fraction", [0.0, -0.5, 1.5])
def test_promote_rejects_fractions_outside_zero_one(fraction):
    with pytest.raises(ValueError, match="fraction"):
        promote(rows(3, 0), fraction)


def test_promote_takes_survivors_in_leaderboard_order():
    board = leaderboard(ENTRIES, FULL_BASE, WEIGHTS, bits_budget=4.5)
    assert promote(board, 0.5) == ["c-best", "a-tie"]
