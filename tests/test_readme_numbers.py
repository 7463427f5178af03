"""The sentences about the committed comparisons, checked against a recomputation from their records
(reports/compare-3bit, reports/compare-default). They live in reports/README.md (the study results; the README
links there), with the status line in docs/status.md and the note on sensitivity probes in docs/generators.md: the
arm means and intervals in the tables, every p-value quoted in the key comparison sentences (exact tests, as the
reports print them), the Holm note, and the percentages under the prior, arm means and best single winners apart.
No model is needed: only the records are read."""

import json
import math
import re
from pathlib import Path

import pytest

from agentqat.report.analysis import comparisons, summarize
from agentqat.report.records import read_comparison
from agentqat.study.confirm import PRIOR_RUN

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "reports" / "README.md"  # the comparisons' results and the summary table
STATUS = ROOT / "docs" / "status.md"
GENERATORS = ROOT / "docs" / "generators.md"


def _documents() -> list[Path]:
    """Every document a reader meets: the README, the study results and the docs."""
    return [ROOT / "README.md", RESULTS, *sorted((ROOT / "docs").glob("*.md"))]


def _prose(document: Path = RESULTS) -> str:
    """`document` with every run of whitespace (line breaks and indentation included) as one space."""
    return re.sub(r"\s+", " ", document.read_text(encoding="utf-8"))


def _nowhere(text: str) -> bool:
    """Whether no document says `text`."""
    return all(text not in _prose(document) for document in _documents())


class Study:
    """One comparison's records, summaries and tests, with look-ups by arm and quantity."""

    def __init__(self, name: str):
        self.records = read_comparison(ROOT / "reports" / name)
        self.summaries = {summary.arm: summary for summary in summarize(self.records)}
        self.tests = comparisons(self.records, list(self.summaries.values()))

    def test(self, a: str, b: str, quantity: str):
        found = [c for c in self.tests if (c.a, c.b, c.metric) == (a, b, quantity)]
        assert len(found) == 1, f"the report has no single test of {a} vs {b} on {quantity}"
        return found[0]

    def mean(self, arm: str, quantity: str) -> float:
        return self.summaries[arm].intervals[quantity].value

    def prior_full_arena(self) -> float:
        return min(r.quality.perplexity for r in self.records.confirms if r.extra.get("run") == PRIOR_RUN)


@pytest.fixture(scope="module")
def low_bit():
    return Study("compare-3bit")


@pytest.fixture(scope="module")
def default():
    return Study("compare-default")


def _shown(text: str, value: float) -> bool:
    """Whether `text` (a number as the document writes it) is `value` rounded to as many decimals as `text` has."""
    decimals = len(text.partition(".")[2])
    return abs(float(text) - value) <= 0.5 * 10**-decimals + 1e-12


def _claim(fragment: str, document: Path = RESULTS) -> list[str]:
    """Asserts `document` says `fragment` (whitespace-insensitive) and returns the p-values written in it."""
    fragment = re.sub(r"\s+", " ", fragment)
    assert fragment in _prose(document), f"{document.relative_to(ROOT)} no longer says: {fragment!r}"
    return re.findall(r"p = ([0-9.]+)", fragment)


def _table(header: str) -> dict[str, list[str]]:
    """Returns the rows (arm -> cells) of the results table whose header line is `header`."""
    lines = RESULTS.read_text(encoding="utf-8").splitlines()
    start = lines.index(header)
    rows = {}
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        rows[cells[0]] = cells[1:]
    return rows


def _check_table(study: Study, header: str, columns: list[str], arms: dict[str, str]):
    rows = _table(header)
    assert set(rows) == set(arms), f"the table under {header!r} names other arms"
    for label, arm in arms.items():
        for cell, quantity in zip(rows[label], columns):
            numbers = re.findall(r"[0-9][0-9,]*\.?[0-9]*", cell)
            if not numbers:
                assert study.summaries[arm].intervals[quantity] is None, f"{label}: {quantity} has a value"
                continue
            interval = study.summaries[arm].intervals[quantity]
            expected = [interval.value] if len(numbers) == 1 else [interval.value, interval.low, interval.high]
            assert len(numbers) == len(expected), f"{label}, {quantity}: {cell!r}"
            for text, value in zip(numbers, expected):
                assert _shown(text, value), f"{label}, {quantity}: written {text}, records {value:.5g}"


def _p_is(study: Study, fragment: str, tests: list[tuple[str, str, str]], significant: bool | None = None):
    """The p-values in `fragment`, one per test in order, are the recomputed two-sided exact p-values."""
    written = _claim(fragment)
    assert len(written) == len(tests), f"{fragment!r} holds {len(written)} p-values for {len(tests)} tests"
    for text, (a, b, quantity) in zip(written, tests):
        p = study.test(a, b, quantity).p_two_sided
        assert _shown(text, p), f"{a} vs {b} on {quantity}: written p = {text}, records p = {p:.4g}"
        if significant is not None:
            assert (p < 0.05) == significant, f"{a} vs {b} on {quantity}: p = {p:.4g}"


def test_the_low_bit_table_is_the_arm_means_of_the_records(low_bit):
    header = "| arm | final KL | final perplexity | test perplexity | GPL-3 KL | full-arena perplexity |"
    columns = ["final KL", "final perplexity", "test perplexity", "gpl-3.txt KL", "full-arena perplexity"]
    arms = {"llm": "llm", "llm-random-edits": "llm-random-edits", "evo": "evo", "random": "random",
            "llm@gemma3-270m (3 seeds)": "llm-gemma3-270m", "knapsack (one run)": "knapsack"}  # fmt: skip
    _check_table(low_bit, header, columns, arms)


def test_the_default_table_is_the_arm_means_of_the_records(default):
    header = "| arm | final KL | final perplexity | test perplexity | full-arena perplexity |"
    rows = _table(header)
    assert rows["knapsack (one run)"][0].startswith("none")  # it never played an allocation: no result
    assert all(not math.isfinite(v) for v in default.summaries["knapsack"].values["final KL"])
    arms = {"llm": "llm", "llm-random-edits": "llm-random-edits", "evo": "evo", "random": "random"}
    written_rows = {label: cells for label, cells in rows.items() if label in arms}
    assert set(written_rows) == set(arms)
    columns = ["final KL", "final perplexity", "test perplexity", "full-arena perplexity"]
    for label, arm in arms.items():
        for cell, quantity in zip(written_rows[label], columns):
            interval = default.summaries[arm].intervals[quantity]
            numbers = re.findall(r"[0-9]+\.[0-9]+", cell)
            for text, value in zip(numbers, [interval.value, interval.low, interval.high], strict=True):
                assert _shown(text, value), f"{label}, {quantity}: written {text}, records {value:.5g}"


def test_the_low_bit_comparison_sentences_are_the_recomputed_exact_p_values(low_bit):
    s = low_bit
    _p_is(s, "On the full arena the random-edits control is better in KL (p = 0.008) and not different in perplexity (p = 0.095)",
          [("llm", "llm-random-edits", "full-arena KL"), ("llm", "llm-random-edits", "full-arena perplexity")])  # fmt: skip
    assert s.test("llm", "llm-random-edits", "full-arena KL").cliffs_delta > 0  # the control is the lower
    # the GPL-3 text: llm lower, not significant (the README once said its replies did slightly worse)
    _p_is(s, "llm lower in KL (1.119 against 1.151, p = 0.056) and perplexity (p = 0.056), not significant either",
          [("llm", "llm-random-edits", "gpl-3.txt KL"), ("llm", "llm-random-edits", "gpl-3.txt perplexity")], significant=False)  # fmt: skip
    assert _shown("1.119", s.mean("llm", "gpl-3.txt KL")) and _shown("1.151", s.mean("llm-random-edits", "gpl-3.txt KL"))
    assert _nowhere("slightly worse than random ones")
    search = ("final KL", "final perplexity", "KL AUC (tokens)", "test KL", "test perplexity")
    ps = [s.test("llm", "llm-random-edits", quantity).p_two_sided for quantity in search]
    _claim("no significant difference on the search's numbers or the test split (two-sided Mann-Whitney p 0.31-0.69)")
    assert _shown("0.31", min(ps)) and _shown("0.69", max(ps))

    _p_is(s, "evo is better on final KL and perplexity (p = 0.016), KL AUC and test KL (p = 0.008) and full-arena KL (p = 0.008)",
          [("llm", "evo", "final KL"), ("llm", "evo", "KL AUC (tokens)"), ("llm", "evo", "full-arena KL")], significant=True)  # fmt: skip
    for quantity in ("final perplexity", "test KL"):
        assert s.test("llm", "evo", quantity).p_two_sided < 0.05 and s.test("llm", "evo", quantity).cliffs_delta > 0
    _p_is(s, "test and full-arena perplexity do not differ significantly (p = 0.31)", [("llm", "evo", "test perplexity")], significant=False)
    _p_is(s, "GPL-3 scores (KL p = 0.69, perplexity p = 0.42; llm's mean is the lower)",
          [("llm", "evo", "gpl-3.txt KL"), ("llm", "evo", "gpl-3.txt perplexity")], significant=False)  # fmt: skip
    assert s.mean("llm", "gpl-3.txt KL") < s.mean("evo", "gpl-3.txt KL")

    # "evo is the best searcher" does not hold against the random-edits control
    _p_is(s, "no significant difference on final KL and perplexity (p = 0.42, 0.31), the test split (KL p = 0.056, perplexity "
             "p = 0.15), GPL-3 (p = 0.69, 0.55) or the full arena (p = 0.84); only its KL AUC is lower (p = 0.016",
          [("evo", "llm-random-edits", "final KL"), ("evo", "llm-random-edits", "test KL"),
           ("evo", "llm-random-edits", "test perplexity"), ("evo", "llm-random-edits", "gpl-3.txt KL"), ("evo", "llm-random-edits", "full-arena KL"),
           ("evo", "llm-random-edits", "KL AUC (tokens)")])  # fmt: skip
    for quantity, shown in (("final perplexity", "0.31"), ("gpl-3.txt perplexity", "0.55"), ("full-arena perplexity", "0.84")):
        assert _shown(shown, s.test("evo", "llm-random-edits", quantity).p_two_sided)
    assert all(s.test("evo", "llm-random-edits", q).p_two_sided >= 0.05 for q in search if q != "KL AUC (tokens)")
    assert _nowhere("evo is the best searcher")

    _p_is(s, "llm is better in final KL (p = 0.008), final perplexity (p = 0.032), test perplexity (p = 0.008), GPL-3 perplexity "
             "(p = 0.008) and full-arena perplexity (p = 0.008)",
          [("llm", "random", "final KL"), ("llm", "random", "final perplexity"), ("llm", "random", "test perplexity"),
           ("llm", "random", "gpl-3.txt perplexity"), ("llm", "random", "full-arena perplexity")], significant=True)  # fmt: skip
    prior = s.records.baseline.best_within_budget("kl").aggregate.kl
    _claim("its best search KL is the prior's in all 5 seeds")
    assert s.summaries["random"].values["final KL"] == [prior] * 5

    _p_is(s, "its test perplexity is, if anything, higher: p = 0.071", [("llm", "llm-gemma3-270m", "test perplexity")], significant=False)
    gemma = [c.p_two_sided for c in s.tests if (c.a, c.b) == ("llm", "llm-gemma3-270m")]
    _claim("differs significantly on nothing (two-sided p 0.07-1")
    assert _shown("0.07", min(gemma)) and max(gemma) == 1.0

    # the knapsack's single value: a one-sample question, whose floor is 2/32
    _claim("this is a one-sample question (llm's 5 values against the knapsack's single value), and the exact signed-rank "
           "test cannot go below p = 0.0625 with 5 runs: not significant")  # fmt: skip
    for quantity in ("final KL", "final perplexity"):
        test = s.test("llm", "knapsack", quantity)
        assert test.kind == "one-sample" and test.p_floor == pytest.approx(0.0625) and test.p_two_sided >= 0.05 and test.cliffs_delta == -1

    # Holm over the report's family
    tested = [c for c in s.tests if c.kind != "no result"]
    _claim(f"none survives Holm's adjustment over the report's {len(tested)} tests (the smallest adjusted p is 0.714)")
    assert _shown("0.714", min(c.p_holm for c in tested))


def test_the_low_bit_percentages_keep_arm_means_and_single_winners_apart(low_bit):
    s = low_bit
    prior_search = s.records.baseline.best_within_budget("kl").aggregate
    prior_full = s.prior_full_arena()
    # the knapsack's best is the prior (KL 0.5726): its re-scores are the prior's on unseen text
    assert s.summaries["knapsack"].values["final KL"] == [prior_search.kl]
    prior_test = s.summaries["knapsack"].values["test perplexity"][0]

    def best_mean(quantity):
        return min((s.mean(arm, quantity), arm) for arm, summary in s.summaries.items() if len(summary.seeds) > 1)

    def best_single(quantity):
        return min(summary.best(quantity) for summary in s.summaries.values())

    def under(value, prior):
        return f"{100 * (1 - value / prior):.1f}%"

    (search, search_arm), (full, full_arm), (test, test_arm) = (best_mean(q) for q in ("final perplexity", "full-arena perplexity", "test perplexity"))
    (kl, kl_run), (test_single, test_run) = best_single("final KL"), best_single("test perplexity")
    assert (search_arm, full_arm, test_arm, kl_run, test_run) == ("evo", "llm-random-edits", "evo", "evo-seed3", "evo-seed4")
    _claim(f"The best arm mean is {under(search, prior_search.perplexity)} under the prior's perplexity on the search's windows "
           f"(evo, {search:.2f} against {prior_search.perplexity:.2f}), {under(full, prior_full)} on the full arena "
           f"(llm-random-edits, {full:.2f} against {prior_full:.2f}) and {under(test, prior_test)} on the test split (evo, "
           f"{test:.2f} against {prior_test:.2f}); the best single winner is {under(kl, prior_search.kl)} under the prior's "
           f"search KL (evo seed 3, {kl:.4f} against {prior_search.kl:.4f}) and {under(test_single, prior_test)} under its test "
           f"perplexity (evo seed 4, {test_single:.2f})")  # fmt: skip
    status = (f"about 2% over uniform GPTQ W3 at 3.3 bits (the best arm mean; the best single winner "
              f"{under(test_single, prior_test)[:-1]}-{under(kl, prior_search.kl)}")  # fmt: skip
    _claim(status)  # the summary table
    _claim(status, STATUS)


def test_the_default_comparison_sentences_are_the_recomputed_exact_p_values(default):
    s = default
    tested = [c for c in s.tests if c.kind != "no result"]
    assert {c.a for c in s.tests} == {"llm"}  # llm is the best searcher too: only its tests
    _claim("two-sided exact Mann-Whitney p from 0.087 to 1, 5 runs against 5")
    assert _shown("0.087", min(c.p_two_sided for c in tested)) and max(c.p_two_sided for c in tested) == 1.0
    _p_is(s, "against random in final perplexity (p = 0.087, Cliff's delta -0.68), not significant",
          [("llm", "random", "final perplexity")], significant=False)  # fmt: skip
    assert s.test("llm", "random", "final perplexity").cliffs_delta == pytest.approx(-0.68)
    # the knapsack never produced a value: no result, never a p-value
    _claim("The knapsack arm has no result to test.")
    assert all(c.kind == "no result" for c in s.tests if c.b == "knapsack")

    prior = s.prior_full_arena()
    means = [s.mean(arm, "full-arena perplexity") for arm in ("llm", "llm-random-edits", "evo", "random")]
    value, run = min(summary.best("full-arena perplexity") for summary in s.summaries.values() if summary.best("full-arena perplexity"))
    assert run == "llm-seed0" and all(1 - m / prior < 0.01 for m in means)
    _claim(f"Every arm's mean full-arena perplexity is within 1% of the prior's ({min(means):.2f}-{max(means):.2f} against "
           f"{prior:.2f}); the best single winner, llm seed 0, is {100 * (1 - value / prior):.1f}% under it ({value:.2f})")  # fmt: skip

    # the single best winner (the rank-1 winner file of llm seed 0) on the test split and the unseen GPL-3 text
    runs = s.summaries
    test_kl = {run: v for summary in runs.values() for v, run in zip(summary.values["test KL"], summary.runs["test KL"])}
    others = [v for run, v in test_kl.items() if run != "llm-seed0"]
    _claim(f"test-split KL {test_kl['llm-seed0']:.3f} against {min(others):.3f}-{max(others):.3f} for the other {len(others)} winners, "
           "and the lowest KL on the unseen GPL text too")  # fmt: skip
    assert min(summary.best("gpl-3.txt KL") for summary in runs.values() if summary.best("gpl-3.txt KL"))[1] == "llm-seed0"


def test_the_sensitivity_probes_are_not_said_to_be_charged_to_the_budget():
    from agentqat.session import evolve

    assert "not charged to the run" in evolve.__doc__
    assert _nowhere("counted against `--budget`")
    _claim("recorded as preparation in the run's `sensitivities.json`, not charged to `--budget`", GENERATORS)


def test_the_gguf_polish_figures_are_llama_cpps_records():
    """The polish-in-IQ4_NL figures (reports/gguf-polish) in its README, reports/README.md, docs and the README are
    llama.cpp's records in engine.jsonl: KL per file and text, and the change against the stock file."""
    records = [json.loads(line) for line in (ROOT / "reports" / "gguf-polish" / "engine.jsonl").read_text().splitlines()]
    kl = {(r["polish"], r["file"], "test" if r["text"] == "test" else "gpl-3"): r["kl"]["mean_kl"] for r in records}
    stock, polished = kl[("stock-iq4nl", "unpolished", "test")], kl[("stock-iq4nl", "polished", "test")]
    gpl_stock, gpl_polished = kl[("stock-iq4nl", "unpolished", "gpl-3")], kl[("stock-iq4nl", "polished", "gpl-3")]
    change, gpl_change = 100 * (polished / stock - 1), 100 * (gpl_polished / gpl_stock - 1)
    assert {r["file_bytes"] for r in records if r["polish"] == "stock-iq4nl"} == {91727104}
    report = ROOT / "reports" / "gguf-polish" / "README.md"
    _claim(f"| the same, polished inside IQ4_NL | **{polished:.4f} ({change:+.1f}%)**", report)
    _claim(f"| {gpl_polished:.4f} ({gpl_change:+.1f}%) |", report)
    _claim(f"llama.cpp's KL {polished:.4f} against {stock:.4f} for the stock IQ4_NL + imatrix file ({change:+.1f}%")
    _claim(f"| the same, polished inside IQ4_NL | {polished:.4f} ({change:+.1f}%) | {gpl_polished:.4f} ({gpl_change:+.1f}%) |", ROOT / "docs" / "polish.md")
    _claim(f"with llama.cpp's KL {polished:.4f} on the test split ({change:+.1f}%), though {gpl_change:.1f}% worse", ROOT / "README.md")
    for (polish, file, text), value in kl.items():
        if polish == "tight-iq4nl":
            assert f"{value:.4f}" in report.read_text(), (polish, file, text)


def test_the_gguf_gptq_figures_are_llama_cpps_records():
    """The GPTQ-inside-IQ4_NL figures (reports/gguf-gptq) in its README, reports/README.md, docs and the README are
    llama.cpp's records in engine.jsonl: KL per arena, strategy and text, bytes, and the changes against the stock
    IQ4_NL + imatrix file."""
    records = [json.loads(line) for line in (ROOT / "reports" / "gguf-gptq" / "engine.jsonl").read_text().splitlines()]
    kl = {(r["arena"], r["name"], "gpl-3" if r["text"].endswith("gpl-3.txt") else r["text"]): r["kl"]["mean_kl"] for r in records}
    size = {(r["arena"], r["name"]): r["file_bytes"] for r in records}
    stock, gptq = ("smollm2-gguf", "llama.cpp stock IQ4_NL + imatrix"), ("smollm2-gguf-gptq", "uniform IQ4_NL by GPTQ")
    tight = ("smollm2-gguf-gptq-tight", "uniform IQ4_NL by GPTQ")
    assert size[stock] == size[gptq] == 91727104 and size[tight] == 77571328
    change = {text: 100 * (kl[(*gptq, text)] / kl[(*stock, text)] - 1) for text in ("test", "gpl-3")}
    smaller = 100 * (1 - size[tight] / size[stock])
    report = ROOT / "reports" / "gguf-gptq" / "README.md"
    _claim(f"| {kl[(*gptq, 'heldout')]:.4f} | **{kl[(*gptq, 'test')]:.4f} ({change['test']:+.1f}%)** |", report)
    _claim(f"| **{kl[(*gptq, 'gpl-3')]:.4f} ({change['gpl-3']:+.1f}%)** |", report)
    _claim(f"| {kl[(*tight, 'heldout')]:.4f} | **{kl[(*tight, 'test')]:.4f} ({100 * (kl[(*tight, 'test')] / kl[(*stock, 'test')] - 1):+.1f}%)** |", report)
    _claim(f"KL {kl[(*tight, 'test')]:.4f} against {kl[(*stock, 'test')]:.4f}", report)
    for key, value in kl.items():
        assert f"{value:.4f}" in report.read_text(), key
    _claim(f"with llama.cpp's KL {kl[(*gptq, 'test')]:.4f} on the test split ({change['test']:+.1f}%) and {kl[(*gptq, 'gpl-3')]:.4f} on a licence "
           f"text unlike the calibration news ({change['gpl-3']:+.1f}%)", ROOT / "README.md")  # fmt: skip
    _claim(f"IQ4_NL head is {smaller:.1f}% smaller and matches the stock file on the test split ({kl[(*tight, 'test')]:.4f} against "
           f"{kl[(*stock, 'test')]:.4f})", ROOT / "README.md")  # fmt: skip


def test_the_gguf_gptq_calibration_seeds_are_their_records():
    """The calibration-seed comparison (reports/gguf-gptq/seeds.jsonl) as its README and the README say it: each
    arm's mean and range of llama.cpp's KL per text, and the exact Mann-Whitney p of GPTQ against the stock file."""
    import numpy as np

    from agentqat.study.stats import compare_arms

    records = [json.loads(line) for line in (ROOT / "reports" / "gguf-gptq" / "seeds.jsonl").read_text().splitlines()]
    report = ROOT / "reports" / "gguf-gptq" / "README.md"
    changes = {}
    for text, label in (("test", "test split"), ("reports/unseen/gpl-3.txt", "GPL-3")):
        kl = {arm: np.array([r["kl"]["mean_kl"] for r in records if r["arm"] == arm and r["text"] == text]) for arm in ("IQ4_NL by GPTQ", "stock IQ4_NL + imatrix")}
        gptq, stock = kl["IQ4_NL by GPTQ"], kl["stock IQ4_NL + imatrix"]
        assert len(gptq) == len(stock) == 5
        test = compare_arms("IQ4_NL by GPTQ", gptq, "stock IQ4_NL + imatrix", stock, "engine KL")
        change = 100 * (gptq.mean() / stock.mean() - 1)
        _claim(f"| {label} | {gptq.mean():.4f} ({gptq.min():.4f}-{gptq.max():.4f}) | {stock.mean():.4f} ({stock.min():.4f}-{stock.max():.4f}) "
               f"| {change:+.1f}% | {test.p_two_sided:.4f} |", report)  # fmt: skip
        assert gptq.max() < stock.min() and test.p_two_sided == pytest.approx(2 / 252)
        changes[label] = change
    _claim(f"every GPTQ file is under every stock file on both texts (exact Mann-Whitney p = 0.0079; mean {changes['test split']:+.1f}% on the "
           f"test split, {changes['GPL-3']:+.1f}% on the licence text)", ROOT / "README.md")  # fmt: skip


def test_the_gguf_gptq_second_model_figures_are_its_records():
    """Gemma 3 270M's files over 5 calibration seeds (reports/gguf-gptq/gemma3-270m.jsonl) as its README and the
    README give them: per arm and text the mean and range, the change of the mean and the exact test."""
    import statistics

    from agentqat.study.stats import compare_arms

    records = [json.loads(line) for line in (ROOT / "reports" / "gguf-gptq" / "gemma3-270m.jsonl").read_text().splitlines()]
    gptq, stock = "IQ4_NL by GPTQ", "stock IQ4_NL + imatrix"

    def values(arm: str, text: str) -> list[float]:
        return [r["kl"]["mean_kl"] for r in records if r["arm"] == arm and ("gpl-3" if r["text"].endswith("gpl-3.txt") else r["text"]) == text]

    report = ROOT / "reports" / "gguf-gptq" / "README.md"
    for text, label in (("test", "test split"), ("gpl-3", "GPL-3")):
        a, b = values(gptq, text), values(stock, text)
        assert len(a) == len(b) == 5 and max(a) < min(b)
        test = compare_arms(gptq, a, stock, b, text)
        change = 100 * (statistics.mean(a) / statistics.mean(b) - 1)
        cells = [f"{statistics.mean(v):.4f} ({min(v):.4f}-{max(v):.4f})" for v in (a, b)]
        _claim(f"| {label} | {cells[0]} | {cells[1]} | {change:.1f}% | {test.p_two_sided:.4f} |", report)
    mean_gptq, mean_stock = statistics.mean(values(gptq, "test")), statistics.mean(values(stock, "test"))
    _claim(f"same rounding gives a mean {mean_gptq:.4f} against {mean_stock:.4f} on the test split ({100 * (mean_gptq / mean_stock - 1):.1f}%)", ROOT / "README.md")


@pytest.fixture(scope="module")
def gguf():
    return Study("compare-gguf")


def test_the_gguf_comparison_paragraphs_are_its_records(gguf):
    """The pre-registered GGUF comparison (reports/compare-gguf) as the README, reports/README.md and its own README
    give it: the plan's hypotheses and their exact p-values, llama.cpp's KL of the winners per arm, the winner chosen
    on search data, the engine's order against the search's, and the Holm note."""
    from agentqat.report.engine_section import order_sentence
    from agentqat.study.plan import evaluate, parse_plan

    s, readme, own = gguf, ROOT / "README.md", ROOT / "reports" / "compare-gguf" / "README.md"
    outcomes = evaluate(parse_plan(s.records.plan), s.records, list(s.summaries.values()))
    assert [o.verdict for o in outcomes] == ["not held"] * 4 and all(o.p_holm == 1 for o in outcomes)
    p = {o.hypothesis.b: o.test.p_two_sided for o in outcomes}
    shown = [f"{p[arm]:.3g}" for arm in ("random", "llm-random-edits", "llm-no-reflection", "evo")]
    assert shown == ["0.278", "0.722", "1", "0.762"]
    _claim("on final KL, llm against random p = 0.278, against the random-reply pipeline p = 0.722, against no reflection p = 1", readme)
    _claim("and against evo p = 0.762 (exact Mann-Whitney, Holm-adjusted 1 each)", readme)
    _claim("llm-no-reflection and evo on final KL, exact Mann-Whitney p = 0.278, 0.722, 1 and 0.762, Holm-adjusted 1 each")
    for o in outcomes:
        _claim(f"| {o.hypothesis.name}: llm < {o.hypothesis.b} | {o.test.p_two_sided:.3g} | 1 | {o.test.cliffs_delta:+.2f} |".replace("+0.00", "0.00"), own)
    final = {arm: s.mean(arm, "final KL") for arm in ("llm", "llm-no-reflection")}
    assert _shown("0.1057", final["llm"]) and _shown("0.1057", final["llm-no-reflection"])

    engine = {arm: s.mean(arm, "engine test KL") for arm in s.summaries}
    stock = {r["text"]: r["kl"]["mean_kl"] for r in s.records.engine if r.get("stock") == "IQ4_NL"}
    _claim(f"llm's winners average KL {engine['llm']:.4f} against {stock['test']:.4f} for the stock file", readme)
    _claim(f"a Gemma 3 270M proposer (5 seeds) {engine['llm-gemma3-270m']:.4f}", readme)
    _claim(f"llm {engine['llm']:.4f}, evo {engine['evo']:.4f}, random {engine['random']:.4f}, the knapsack {engine['knapsack']:.4f}, "
           f"the Gemma 3 270M proposer {engine['llm-gemma3-270m']:.4f}, and the stock IQ4_NL + imatrix file {stock['test']:.4f}")  # fmt: skip
    labels = {"llm": "llm", "llm-no-reflection": "llm-no-reflection", "llm-random-edits": "llm-random-edits", "evo": "evo",
              "random": "random", "llm-gemma3-270m": "llm-gemma3-270m (exploratory)"}  # fmt: skip
    for arm, label in labels.items():
        cells = []
        for quantity in ("engine test KL", "engine gpl-3.txt KL"):
            i = s.summaries[arm].intervals[quantity]
            cells.append(f"{i.value:.4f} [{i.low:.4f}, {i.high:.4f}]")
        _claim(f"| {label} | {cells[0]} | {cells[1]} |", own)

    # the winner chosen on search data alone: the lowest final KL of any run
    run = min((v, r) for su in s.summaries.values() for v, r in zip(su.values["final KL"], su.runs["final KL"]))[1]
    chosen = {r["text"]: r["kl"]["mean_kl"] for r in s.records.engine if r.get("run") == run}
    assert run == "evo-seed2"
    _claim(f"the winner chosen on search data (evo, seed 2) is {chosen['test']:.4f}", readme)
    change = {t: 100 * (1 - chosen[t] / stock[t]) for t in chosen}
    _claim(f"is {chosen['test']:.4f} on the test split, {change['test']:.1f}% under the stock file, and "
           f"{chosen['reports/unseen/gpl-3.txt']:.4f} on GPL-3 ({change['reports/unseen/gpl-3.txt']:.1f}% under)", own)  # fmt: skip

    # the engine's KL: no arm differs from llm; the order differs from the search split's
    engine_ps = [c.p_two_sided for c in s.tests if c.a == "llm" and c.metric in ("engine test KL", "engine gpl-3.txt KL")]
    assert len(engine_ps) == 12 and _shown("0.278", min(engine_ps)) and max(engine_ps) == 1
    _claim("No arm differs from llm on the engine's KL (p from 0.278 to 1)")
    sentence = order_sentence(list(s.summaries.values()))
    rho = re.search(r"over the (\d+) runs: ([0-9]\.[0-9]+)", sentence)
    assert "(a different order)" in sentence and rho.groups() == ("31", "0.25")
    _claim("The engine orders the arms differently from the search split (Spearman 0.25 over 31 runs)", readme)
    auc = [s.test("llm", arm, "KL AUC (tokens)") for arm in ("evo", "random")]
    assert all(_shown("0.0079", c.p_two_sided) and c.cliffs_delta == -1 for c in auc)
    tested = [c for c in s.tests if c.kind != "no result"]
    assert len(tested) == 132 and min(c.p_holm for c in tested) == 1
    speed = ("KL AUC (tokens)", "tokens to baseline KL")
    below = [c for c in tested if c.p_two_sided < 0.05]
    assert {(c.a, c.b, c.metric) for c in below if c.metric not in speed} == {("evo", "random", "final perplexity")}
    for c in below:  # the LLM pipeline's arms faster than evo, llm faster than random
        if c.metric in speed:
            assert (c.a == "llm" and c.cliffs_delta < 0) or (c.a == "evo" and c.b.startswith("llm") and c.cliffs_delta > 0)
    assert _shown("0.0079", min(c.p_two_sided for c in below)) and _shown("0.048", max(c.p_two_sided for c in below))
    assert _shown("0.032", s.test("evo", "random", "final perplexity").p_two_sided)
    _claim("tokens to baseline KL, p from 0.0079 to 0.048), and evo's final perplexity is under random's (p = 0.032); none of "
           "the report's 132 tests survives Holm's adjustment")  # fmt: skip


def test_the_tight_gptq_study_figures_are_llama_cpps_records():
    """What reports/README.md and the study's NOTES.md say of compare-gguf-gptq-tight is its engine.jsonl: the
    allocation arm's file against the stock one, and every evo winner the same file."""
    directory = ROOT / "reports" / "compare-gguf-gptq-tight"
    records = [json.loads(line) for line in (directory / "engine.jsonl").read_text().splitlines()]
    kl = {(r.get("run") or r["stock"], "test" if r["text"] == "test" else "gpl-3"): r["kl"]["mean_kl"] for r in records}
    size = {r.get("run") or r["stock"]: r["file_bytes"] for r in records}
    smaller = 100 * (1 - size["knapsack-seed0"] / size["IQ4_NL"])
    assert _shown("15.4", smaller) and kl[("knapsack-seed0", "test")] < kl[("IQ4_NL", "test")] and kl[("knapsack-seed0", "gpl-3")] > kl[("IQ4_NL", "gpl-3")]
    figures = [f"{kl[(name, text)]:.4f}" for name in ("knapsack-seed0", "IQ4_NL") for text in ("test", "gpl-3")]
    _claim(f"the allocation arm's file is 15.4% smaller than the stock IQ4_NL + imatrix file with llama.cpp KL {figures[0]} against "
           f"{figures[2]} on the test split ({figures[1]} against {figures[3]} on GPL-3)")  # fmt: skip
    evo = {(kl[(f"evo-seed{k}", "test")], kl[(f"evo-seed{k}", "gpl-3")]) for k in range(5)}
    assert len(evo) == 1
    notes = directory / "NOTES.md"
    _claim(f"| evo, all 5 seeds (one and the same strategy) | 77,571,328 | {next(iter(evo))[0]:.4f} | {next(iter(evo))[1]:.4f} |", notes)
    _claim(f"| knapsack (the allocation arm, one run) | 77,571,328 | {figures[0]} | {figures[1]} |", notes)


def test_the_awq_fold_figures_are_llama_cpps_records():
    """reports/gguf-awq/README.md's table is its engine.jsonl: each file's KL and its change against the stock file."""
    directory = ROOT / "reports" / "gguf-awq"
    records = [json.loads(line) for line in (directory / "engine.jsonl").read_text().splitlines()]
    kl = {(r["arm"], "test" if r["text"] == "test" else "gpl-3"): r["kl"]["mean_kl"] for r in records}
    stock = "stock IQ4_NL + imatrix"
    for arm, bold in (("AWQ, then stock IQ4_NL + imatrix", "**"), ("AWQ, then IQ4_NL by GPTQ", "")):
        test, gpl = (100 * (kl[(arm, text)] / kl[(stock, text)] - 1) for text in ("test", "gpl-3"))
        row = (f"| {arm} | 91,727,136 | **{kl[(arm, 'test')]:.4f} ({test:.1f}%)** | ")
        _claim(row, directory / "README.md")
        gpl_cell = f"{bold}{kl[(arm, 'gpl-3')]:.4f} ({gpl:.1f}%){bold}"
        _claim(gpl_cell, directory / "README.md")
    gptq, folded = kl[("IQ4_NL by GPTQ", "test")], kl[("AWQ, then IQ4_NL by GPTQ", "test")]
    _claim(f"AWQ then GPTQ is {100 * (1 - folded / gptq):.1f}% under GPTQ alone on the test split", directory / "README.md")
    over = 100 * (kl[("AWQ, then IQ4_NL by GPTQ", "gpl-3")] / kl[("IQ4_NL by GPTQ", "gpl-3")] - 1)
    _claim(f"and {over:.1f}% over it on GPL-3", directory / "README.md")
    readme = ROOT / "README.md"
    stock_test, stock_gpl = kl[(stock, "test")], kl[(stock, "gpl-3")]
    awq_test, awq_gpl = kl[("AWQ, then stock IQ4_NL + imatrix", "test")], kl[("AWQ, then stock IQ4_NL + imatrix", "gpl-3")]
    _claim(f"IQ4_NL + imatrix recipe from {stock_test:.4f} to {awq_test:.4f} on the test split ({100 * (awq_test / stock_test - 1):.1f}%) "
           f"and from {stock_gpl:.4f} to {awq_gpl:.4f} on the licence text ({100 * (awq_gpl / stock_gpl - 1):.1f}%)", readme)  # fmt: skip
    _claim(f"GPTQ after the fold gives {folded:.4f} ({100 * (folded / stock_test - 1):.1f}%), though on the licence text it is "
           f"{over:.1f}% over GPTQ alone", readme)  # fmt: skip


def test_the_rerun_tight_gptq_study_figures_are_its_records():
    """What README.md, reports/README.md and the study's README say of compare-gguf-gptq-tight-2 is its records: the
    file chosen on search data (the lowest rank-1 KL of the searched runs), llama.cpp's KL of it, of the allocation
    arm's and of the stock file, and the registered hypothesis as the report states it."""
    directory = ROOT / "reports" / "compare-gguf-gptq-tight-2"
    records = [json.loads(line) for line in (directory / "engine.jsonl").read_text().splitlines()]
    kl = {(r.get("run") or r["stock"], "test" if r["text"] == "test" else "gpl-3"): r["kl"]["mean_kl"] for r in records}
    size = {r.get("run") or r["stock"]: r["file_bytes"] for r in records}
    searched = {run.name: json.loads((run / "summary.json").read_text())["leaderboard"][0]["aggregate"]["kl"]
                for run in (directory / "runs").iterdir() if not run.name.startswith("knapsack")}  # fmt: skip
    chosen = min(searched, key=searched.get)
    assert chosen == "evo-seed0" and _shown("15.4", 100 * (1 - size[chosen] / size["IQ4_NL"]))
    change = {text: 100 * (kl[(chosen, text)] / kl[("IQ4_NL", text)] - 1) for text in ("test", "gpl-3")}
    _claim(f"15.4% smaller than the stock one with llama.cpp's KL {kl[(chosen, 'test')]:.4f} against {kl[('IQ4_NL', 'test')]:.4f} on the test "
           f"split ({change['test']:.1f}%), but {kl[(chosen, 'gpl-3')]:.4f} against {kl[('IQ4_NL', 'gpl-3')]:.4f} on the licence text "
           f"(+{change['gpl-3']:.1f}%)", ROOT / "README.md")  # fmt: skip
    _claim(f"knapsack, one run, a single measurement: {kl[('knapsack-seed0', 'test')]:.4f} and {kl[('knapsack-seed0', 'gpl-3')]:.4f})", ROOT / "README.md")
    _claim(f"15.4% smaller than the stock file with llama.cpp KL {kl[(chosen, 'test')]:.4f} against {kl[('IQ4_NL', 'test')]:.4f} on the test "
           f"split ({change['test']:.1f}%), {kl[(chosen, 'gpl-3')]:.4f} against {kl[('IQ4_NL', 'gpl-3')]:.4f} on GPL-3 (+{change['gpl-3']:.1f}%)")  # fmt: skip
    evo_test = [kl[(f"evo-seed{k}", "test")] for k in range(5)]
    random_test = [kl[(f"random-seed{k}", "test")] for k in range(5)]
    assert max(evo_test) < min(random_test)  # "every evo winner is under every random one"
    study = directory / "README.md"
    _claim(f"| evo, mean of 5 | 77,564,416-77,571,328 | {sum(evo_test) / 5:.4f} | {sum(kl[(f'evo-seed{k}', 'gpl-3')] for k in range(5)) / 5:.4f} |", study)
    _claim(f"its KL on the test split is {-change['test']:.1f}% lower. On the GPL-3 text it is {change['gpl-3']:.1f}% higher", study)
    assert "1 of 1 held (H1)" in (directory / "report.md").read_text()


def test_the_gemma_awq_fold_figures_are_llama_cpps_records():
    """reports/gguf-awq/README.md's Gemma table is gemma3-270m.jsonl, each change against the stock file, and its
    comparison of AWQ then GPTQ with GPTQ alone."""
    directory = ROOT / "reports" / "gguf-awq"
    records = {(r["arm"], "test" if r["text"] == "test" else "gpl-3"): r for r in map(json.loads, (directory / "gemma3-270m.jsonl").read_text().splitlines())}
    kl = {key: r["kl"]["mean_kl"] for key, r in records.items()}
    stock = "stock IQ4_NL + imatrix"
    names = {stock: stock, "AWQ, then stock IQ4_NL + imatrix": "AWQ, then stock IQ4_NL + imatrix",
             "IQ4_NL by GPTQ": "IQ4_NL by GPTQ (head Q8_0 by GPTQ)", "AWQ, then IQ4_NL by GPTQ": "AWQ, then IQ4_NL by GPTQ"}  # fmt: skip
    for arm, shown in names.items():
        cells = []
        for text in ("test", "gpl-3"):
            change = "" if arm == stock else f" ({100 * (kl[(arm, text)] / kl[(stock, text)] - 1):+.1f}%)".replace("+-", "-")
            cells += [f"{kl[(arm, text)]:.4f}{change}", f"{records[(arm, text)]['kl']['perplexity']:.2f}"]
        _claim(f"| {shown} | {records[(arm, 'test')]['file_bytes']:,} | {' | '.join(cells)} |", directory / "README.md")
    gptq, both = "IQ4_NL by GPTQ", "AWQ, then IQ4_NL by GPTQ"
    over, under = 100 * (kl[(both, "test")] / kl[(gptq, "test")] - 1), 100 * (1 - kl[(both, "gpl-3")] / kl[(gptq, "gpl-3")])
    _claim(f"AWQ then GPTQ is {over:.1f}% over GPTQ alone on the test split", directory / "README.md")
    _claim(f"{under:.1f}% under it on GPL-3", directory / "README.md")

def test_the_gguf_transfer_figures_are_llama_cpps_records():
    """reports/gguf-transfer/README.md's table is gemma3-270m.jsonl, each winner's change against the stock file."""
    directory = ROOT / "reports" / "gguf-transfer"
    records = {(r["arm"], "test" if r["text"] == "test" else "gpl-3"): r for r in map(json.loads, (directory / "gemma3-270m.jsonl").read_text().splitlines())}
    stock = "stock IQ4_NL + imatrix"
    rows = {stock: "llama.cpp's stock IQ4_NL + imatrix", "reports/gguf-gptq/uniform-iq4nl-gptq.json": "uniform IQ4_NL by GPTQ",
            "reports/compare-gguf-gptq/winners/gguf-evo-seed0.json": "`compare-gguf-gptq`'s winner, carried over",
            "reports/compare-gguf-gptq-tight-2/winners/gguf-evo-seed0.json": "`compare-gguf-gptq-tight-2`'s winner, carried over"}  # fmt: skip
    for arm, shown in rows.items():
        cells = []
        for text in ("test", "gpl-3"):
            kl, base = records[(arm, text)]["kl"]["mean_kl"], records[(stock, text)]["kl"]["mean_kl"]
            change = f" ({100 * (kl / base - 1):+.1f}%)".replace("+-", "-") if "winner" in shown else ""
            value = f"**{kl:.4f}{change}**" if "gptq`'s" in shown else f"{kl:.4f}{change}"
            cells.append(f"{value} ({records[(arm, text)]['kl']['perplexity']:.2f})")
        arena = "-" if arm == stock else records[(arm, "test")]["arena"]
        _claim(f"| {shown} | {arena} | {records[(arm, 'test')]['file_bytes']:,} | {' | '.join(cells)} |", directory / "README.md")


def test_the_gptq_study_at_the_stock_size_figures_are_its_records():
    """What README.md, reports/README.md and the study's README say of compare-gguf-gptq is its records: the file
    chosen on search data, llama.cpp's KL of it against the stock file, the allocation arm's and uniform GPTQ's, and
    the registered hypothesis as the report states it."""
    directory = ROOT / "reports" / "compare-gguf-gptq"
    records = [json.loads(line) for line in (directory / "engine.jsonl").read_text().splitlines()]
    kl = {(r.get("run") or r["stock"], "test" if r["text"] == "test" else "gpl-3"): r["kl"]["mean_kl"] for r in records}
    size = {r.get("run") or r["stock"]: r["file_bytes"] for r in records}
    uniform = {("test" if r["text"] == "test" else "gpl-3"): r["kl"]["mean_kl"] for r in map(json.loads, (ROOT / "reports" / "gguf-gptq" / "engine.jsonl").read_text().splitlines())
               if r["name"] == "uniform IQ4_NL by GPTQ" and r["arena"] == "smollm2-gguf-gptq" and r["text"] != "heldout"}  # fmt: skip
    searched = {run.name: json.loads((run / "summary.json").read_text())["leaderboard"][0]["aggregate"]["kl"]
                for run in (directory / "runs").iterdir() if not run.name.startswith("knapsack")}  # fmt: skip
    chosen = min(searched, key=searched.get)
    assert chosen == "evo-seed0" and size[chosen] <= size["IQ4_NL"]
    change = {text: 100 * (1 - kl[(chosen, text)] / kl[("IQ4_NL", text)]) for text in ("test", "gpl-3")}
    study = directory / "README.md"
    _claim(f"| evo seed 0 (lowest final KL of all searched runs: the file chosen on search data) | {size[chosen]:,} | "
           f"**{kl[(chosen, 'test')]:.4f} (-{change['test']:.1f}%)** | **{kl[(chosen, 'gpl-3')]:.4f} (-{change['gpl-3']:.1f}%)** |", study)  # fmt: skip
    _claim(f"| knapsack (the allocation arm, one run) | {size['knapsack-seed0']:,} | {kl[('knapsack-seed0', 'test')]:.4f} | {kl[('knapsack-seed0', 'gpl-3')]:.4f} |", study)
    _claim(f"| not an arm: uniform IQ4_NL by GPTQ (`../gguf-gptq/`, in this space) | 91,727,104 | {uniform['test']:.4f} | {uniform['gpl-3']:.4f} |", study)
    over = {text: 100 * (kl[(chosen, text)] / uniform[text] - 1) for text in ("test", "gpl-3")}
    _claim(f"is {over['test']:.1f}% over uniform IQ4_NL by GPTQ on the test split and {over['gpl-3']:.1f}% over on GPL-3", study)
    evo = {text: [kl[(f"evo-seed{k}", text)] for k in range(5)] for text in ("test", "gpl-3")}
    random = {text: [kl[(f"random-seed{k}", text)] for k in range(5)] for text in ("test", "gpl-3")}
    assert all(max(evo[text]) < min(random[text]) for text in evo)  # "every evo winner is under every random winner"
    assert min(evo["test"]) > kl[("knapsack-seed0", "test")] and max(evo["gpl-3"]) < kl[("knapsack-seed0", "gpl-3")]
    _claim(f"| evo, mean of 5 | 91,678,720-91,727,104 | {sum(evo['test']) / 5:.4f} | {sum(evo['gpl-3']) / 5:.4f} |", study)
    _claim(f"| random, mean of 5 | 90,876,928-91,727,104 | {sum(random['test']) / 5:.4f} | {sum(random['gpl-3']) / 5:.4f} |", study)
    for document in (ROOT / "README.md", ROOT / "reports" / "README.md"):
        _claim(f"{kl[(chosen, 'test')]:.4f} against {kl[('IQ4_NL', 'test')]:.4f} on the test split (-{change['test']:.1f}%)", document)
        _claim(f"{kl[(chosen, 'gpl-3')]:.4f} against {kl[('IQ4_NL', 'gpl-3')]:.4f} on GPL-3 (-{change['gpl-3']:.1f}%)", document)
    report = (directory / "report.md").read_text()
    assert "1 of 1 held (H1)" in report and "Spearman's rank correlation of the two over the 11 runs: 0.93." in report
