"""agentqat.study.stats on cases computed by hand."""

import math

import numpy as np
import pytest

from agentqat.study.stats import (
    area_under_curve,
    best_so_far,
    bootstrap_interval,
    budget_to_reach,
    cliffs_delta,
    compare_arms,
    compare_with_value,
    on_grid,
    permutation_p,
    sign_flip_p,
    smallest_p,
)


def test_best_so_far_ignores_failures_and_accumulates_budget():
    budget, best = best_so_far([100, 100, 50, 50], [3.0, math.nan, 2.0, math.inf])
    assert budget.tolist() == [100, 200, 250, 300]
    assert best.tolist() == [3.0, 3.0, 2.0, 2.0]


def test_on_grid_is_the_best_reached_with_at_most_that_budget():
    budget, best = np.array([100.0, 200.0, 300.0]), np.array([3.0, 2.0, 1.0])
    assert on_grid(budget, best, np.array([50.0, 100.0, 250.0, 400.0])).tolist() == [math.inf, 3.0, 2.0, 1.0]


def test_area_under_curve_by_trapezoids_over_the_span():
    # inf before the first result takes the first finite value: [2, 2, 1] -> (2 + 1.5) / 2
    assert area_under_curve(np.array([0.0, 1.0, 2.0]), np.array([math.inf, 2.0, 1.0])) == pytest.approx(1.75)
    assert area_under_curve(np.array([0.0, 1.0]), np.array([math.inf, math.inf])) == math.inf


def test_budget_to_reach_a_target():
    budget, best = np.array([10.0, 20.0, 30.0]), np.array([0.5, 0.3, 0.1])
    assert budget_to_reach(budget, best, 0.3) == 20.0
    assert budget_to_reach(budget, best, 0.05) == math.inf


def test_cliffs_delta_counts_pairs():
    assert cliffs_delta([1, 3], [2]) == 0.0  # one pair lower, one higher
    assert cliffs_delta([1, 2], [3, 4]) == -1.0
    assert cliffs_delta([1, 3], [2, 2]) == 0.0
    assert cliffs_delta([1, 3, 5], [2, 4]) == pytest.approx((-1 - 1 + 1 - 1 + 1 + 1) / 6)


def test_exact_mann_whitney_on_separated_samples():
    comparison = compare_arms("llm", [1.0, 2.0, 3.0], "random", [4.0, 5.0, 6.0], "KL", np.random.default_rng(0))
    assert comparison.method == "exact" and comparison.u == 0
    assert comparison.p_less == pytest.approx(1 / 20)  # one of C(6, 3) orderings
    assert comparison.p_two_sided == pytest.approx(2 / 20)
    assert comparison.cliffs_delta == -1.0
    assert comparison.p_permutation == pytest.approx(0.1, abs=0.02)  # 2 of the 20 labellings, sampled
    assert "do not differ significantly" in comparison.sentence and "not evidence" in comparison.sentence


def test_two_runs_per_arm_can_never_be_significant_and_the_sentence_says_so():
    comparison = compare_arms("llm", [1.0, 2.0], "evo", [3.0, 4.0], "KL", np.random.default_rng(0))
    assert comparison.p_less == pytest.approx(1 / 6)
    assert smallest_p(2, 2) == pytest.approx(1 / 3)
    assert "no p below 0.333" in comparison.sentence


def test_a_significant_difference_is_named_with_its_direction():
    comparison = compare_arms("llm", [7.0, 8, 9, 10, 11, 12], "random", [1.0, 2, 3, 4, 5, 6], "KL", np.random.default_rng(0))
    assert comparison.p_two_sided == pytest.approx(2 / math.comb(12, 6))
    assert comparison.p_less == pytest.approx(1.0)
    assert comparison.sentence.startswith("llm reaches a significantly higher (worse) KL than random")


def test_a_run_that_found_nothing_ranks_worst():
    comparison = compare_arms("a", [1.0, 2.0, 3.0], "b", [math.inf, 5.0, 6.0], "KL", np.random.default_rng(0))
    assert comparison.cliffs_delta == -1.0 and comparison.p_less == pytest.approx(1 / 20)


def test_permutation_p_is_one_sided_when_asked():
    rng = np.random.default_rng(1)
    assert permutation_p([1, 2, 3], [4, 5, 6], rng, "less") == pytest.approx(0.05, abs=0.015)
    assert permutation_p([1, 2, 3], [4, 5, 6], rng, "greater") == pytest.approx(1.0, abs=0.01)


def test_bootstrap_interval_is_seeded_and_covers_the_mean():
    values = [1.0, 2.0, 3.0, 4.0, 5.0]
    first = bootstrap_interval(values, np.random.default_rng(0))
    assert first == bootstrap_interval(values, np.random.default_rng(0))
    assert first.value == 3.0 and 1.0 <= first.low < 3.0 < first.high <= 5.0
    assert bootstrap_interval([2.0, 2.0], np.random.default_rng(0)) == bootstrap_interval([2.0], np.random.default_rng(5))


def test_sign_flip_p_counts_every_flip():
    # 3 positive differences: of the 8 sign patterns, only all-plus and all-minus are as extreme
    assert sign_flip_p([1.0, 2.0, 3.0]) == pytest.approx(2 / 8)
    assert sign_flip_p([1.0, -1.0]) == 1.0


def test_runs_against_one_seed_independent_value():
    below = compare_with_value("llm", [0.50, 0.51, 0.52, 0.53, 0.54], "knapsack", 0.60, "final KL")
    assert below.p_less == pytest.approx(1 / 32) and below.p_two_sided == pytest.approx(2 / 32)
    assert below.cliffs_delta == -1.0 and below.n_b == 1 and below.median_b == 0.60
    # with 5 runs no two-sided signed-rank p can fall below 2/32: the sentence says so instead of claiming a win
    assert "do not differ significantly" in below.sentence and "no p below 0.0625" in below.sentence
    assert smallest_p(5, 1, against_value=True) == pytest.approx(2 / 32)
    six = compare_with_value("llm", [0.50, 0.51, 0.52, 0.53, 0.54, math.inf], "knapsack", 0.60, "final KL")
    # a run that found nothing counts as worse than the value by more than any other difference (rank 6):
    # W+ = 6, and 14 of the 64 sign patterns have W+ <= 6
    assert six.cliffs_delta == pytest.approx(-4 / 6) and six.p_less == pytest.approx(14 / 64)
    same = compare_with_value("llm", [0.6, 0.6], "knapsack", 0.6, "final KL")
    assert same.p_two_sided == 1.0 and same.cliffs_delta == 0.0


def test_a_seed_independent_arm_that_found_nothing_ranks_below_every_run():
    found_nothing = compare_with_value("llm", [0.5, 0.6, math.inf], "knapsack", math.inf, "final KL")
    assert found_nothing.cliffs_delta == pytest.approx(-2 / 3)  # the failed run ties with the value
    assert math.isfinite(found_nothing.p_two_sided) and math.isfinite(found_nothing.p_permutation)
