"""The report of a comparison: DIR/report.md (PNGs beside it in DIR/figures/) and a self-contained
DIR/report.html (the same content, PNGs embedded as base64), rebuilt from the records alone.

The content is a list of blocks (heading, paragraph, table, image) rendered twice, once per format.
"""

from __future__ import annotations

import base64
import html
import math
from dataclasses import dataclass
from pathlib import Path

from agentqat.arena.tournament import rank_stage
from agentqat.models import load_facts
from agentqat.report import figures
from agentqat.report.analysis import (
    SEARCH_QUANTITIES,
    ArmSummary,
    best_searcher,
    comparisons,
    engine_texts,
    quantities,
    reference_arm,
    summarize,
    unseen_label,
    unseen_stages,
)
from agentqat.report.engine_section import engine_chunks, engine_intro, engine_quantities, order_sentence, stock_sentence
from agentqat.report.patterns import Played, contrasts
from agentqat.report.records import ComparisonRecords, read_comparison
from agentqat.rundir.paths import FIGURES_DIR
from agentqat.study.confirm import PRIOR_RUN
from agentqat.study.plan import PlanError, evaluate, parse_plan, registered_hash, sha256
from agentqat.study.stats import NO_RESULT, ONE_SAMPLE, Comparison


@dataclass(frozen=True)
class Block:
    """One piece of the report: kind "h2", "p", "table" (rows[0] is the header) or "img" (text: caption)."""

    kind: str
    text: str = ""
    rows: tuple[tuple[str, ...], ...] = ()
    image: Path | None = None


def _number(value: float) -> str:
    return "never" if value == math.inf else "-" if value is None or math.isnan(value) else f"{value:.4g}"


def played_first_stage(records: ComparisonRecords) -> list[Played]:
    """Returns every strategy of every run with its fate on the run's first stage."""
    played = []
    for run in records.runs:
        first = run.arena.stages[0].name
        results = [result for result in run.results if result.stage == first]
        for row in rank_stage(run.arena, results) if results else []:
            if row.strategy_id in run.documents:
                kl = row.aggregate.kl if row.aggregate.kl is not None else math.nan
                played.append(Played(run.documents[row.strategy_id], row.survives, kl))
    return played


def _prior_note(records: ComparisonRecords) -> str:
    """Returns sentences on the shared prior: how a prior made for the comparison was made, and its figures on the
    full arena ("" when neither is recorded)."""
    made = ""
    if records.prior is not None:
        names = ", ".join(f"{d['name']} ({d.get('notes', '')})" for d in records.prior["documents"])
        cost = records.prior["preparation"]
        made = (f" Every run started from the shared prior {records.prior['prior']}: {names}; making it took "
                f"{cost['matches']} probe matches ({cost['tokens']:,} evaluated tokens), preparation charged to no run.")  # fmt: skip
    priors = [r for r in records.confirms if r.extra.get("run") == PRIOR_RUN and r.quality is not None and not r.failed]
    if not priors:
        return made
    shown = "; ".join(f"{r.strategy_name}: perplexity {r.quality.perplexity:.4g}, KL {r.quality.kl:.4g}" for r in priors)
    return made + f" On the full arena ({priors[0].stage}), the shared prior every arm started from: {shown}."


def _preparation_blocks(records: ComparisonRecords) -> list[Block]:
    """Returns the report's Preparation section: what was measured before the search and what it cost, charged to no
    arm (DIR/preparation.json); for a comparison recorded before preparation was shared, what its runs played of it."""
    blocks = [Block("h2", "Preparation")]
    if records.preparation is not None:
        parts = []
        for item in records.preparation["items"]:
            cost = (f"{item['matches']} matches ({item['tokens']:,} evaluated tokens)" if item["matches"]
                    else f"{item.get('calibration_tokens', 0):,} calibration tokens")  # fmt: skip
            parts.append(f"{item['what']}: {cost}, asked for by {', '.join(item['asked_by'])} ({item['detail']})")
        total = f"{records.preparation['matches']} matches, {records.preparation['tokens']:,} evaluated tokens"
        text = ("Preparation, measured once for the comparison before any run and given to every arm that asks; charged "
                "to no arm (no run's budget counts it, so every arm spends its whole budget on its search): "
                + ("; ".join(parts) if parts else "nothing was asked for") + f". In all: {total}.")  # fmt: skip
        return blocks + [Block("p", text)]
    played = [(run, run.preparation) for run in records.runs if run.preparation]
    text = ("This comparison was recorded before preparation was shared (it has no preparation.json): the per-layer "
            "sensitivity probes of the arms that read them were preparation, measured once per arena and charged to "
            "no arm")  # fmt: skip
    if played:
        each = "; ".join(
            f"{run.name}: {len(probes)} unit probes ({sum(r.tokens for r in probes):,} evaluated tokens, "
            f"{sum(r.tokens for r in probes) / max(1, sum(r.tokens for r in run.results)):.0%} of what the run spent), then "
            f"{len(run.results) - len(probes)} search matches"
            for run, probes in played
        )  # fmt: skip
        text += (", but the knapsack arm measured its unit costs inside its own run and paid for them from its budget ("
                 + each + "). Its numbers here are therefore not those of the allocation method at an equal budget; the "
                 "failure figure leaves its probes out.")  # fmt: skip
    else:
        text += "."
    return blocks + [Block("p", text)]


def _plan_blocks(records: ComparisonRecords, seed: int) -> list[Block]:
    """Returns the report's Pre-registration section: which of PLAN.md's hypotheses held (nothing without a plan)."""
    if records.plan is None:
        return []
    blocks = [Block("h2", "Pre-registration")]
    registered = registered_hash(records.directory)
    state = ("PLAN.md is the one recorded when the comparison started (SHA-256 " + registered[:12] + ")"
             if registered == sha256(records.plan) else
             "PLAN.md has changed since the comparison started: the hypotheses below are not the ones registered"
             if registered else "no record says PLAN.md was there when the comparison started")  # fmt: skip
    try:
        plan = parse_plan(records.plan)
    except PlanError as error:
        return blocks + [Block("p", f"{state}. Its hypotheses block does not parse: {error}")]
    if plan is None or not plan.hypotheses:
        return blocks + [Block("p", f"{state}. It lists no hypotheses in a `hypotheses` block, so none is tested.")]
    outcomes = evaluate(plan, records, summarize(records, seed))
    rows = [("hypothesis", "test", "medians (a vs b)", "p two-sided", "Holm-adjusted p", "Cliff's delta", "verdict", "why")]
    for o in outcomes:
        t = o.test
        tested = t is not None and o.p_holm is not None
        rows.append((o.hypothesis.text(), _test_cell(t) if t is not None else "-", f"{_number(t.median_a)} vs {_number(t.median_b)}" if t is not None else "-",
                     _p(t.p_two_sided) if tested else "-", _p(o.p_holm), f"{t.cliffs_delta:+.2f}" if tested else "-", o.verdict, o.why))  # fmt: skip
    held = [o.hypothesis.name for o in outcomes if o.verdict == "held"]
    summary = (f"{len(held)} of {len(outcomes)} held ({', '.join(held)})" if held else f"none of the {len(outcomes)} held")
    return blocks + [
        Block("p", f"{state}. Its hypotheses, each tested as the report tests arms, Holm-adjusted over the plan's "
                   f"{len(outcomes)} hypotheses at alpha {plan.alpha:g}; a hypothesis held when its adjusted two-sided p is "
                   f"below alpha and the effect has its direction: {summary}."),  # fmt: skip
        Block("table", rows=tuple(rows)),
    ]


def _p(value: float | None) -> str:
    return "no result" if value is None or math.isnan(value) else f"{value:.3g}"


def _arm_rows(summaries: list[ArmSummary], shown: list[str]) -> list[tuple[str, ...]]:
    """Returns per arm a row of its mean over seeds with the bootstrap interval, labelled as such, and (for an arm
    with more than one run) a row of its best single run on each quantity, labelled and with the run's seed."""
    rows = []
    for summary in summaries:
        cells = []
        for quantity in shown:
            interval, values = summary.intervals[quantity], summary.values[quantity]
            never = sum(1 for v in values if v == math.inf)
            cell = "-" if not values else f"{_number(interval.value)} [{_number(interval.low)}, {_number(interval.high)}]" if interval else "never"
            cells.append(cell + (f" ({never} never)" if never and interval else ""))
        runs = len(summary.seeds)
        rows.append((summary.arm, f"arm mean over {runs} seeds" if runs > 1 else "its one run", *cells))
        if runs > 1:
            best = []
            for quantity in shown:
                found = summary.best(quantity)
                best.append("-" if not summary.values[quantity] else "never" if found is None else f"{_number(found[0])} ({found[1]})")
            rows.append((summary.arm, "best single winner", *best))
    return rows


def _test_cell(c: Comparison) -> str:
    if c.kind == ONE_SAMPLE:
        return f"one-sample: {c.a}'s {c.n_a} values against {c.b}'s single value (exact signed-rank)"
    return "no result" if c.kind == NO_RESULT else f"two-sample, {c.n_a} vs {c.n_b} runs (exact Mann-Whitney, mid-ranks)"


def _statistics_blocks(records: ComparisonRecords, seed: int) -> list[Block]:
    summaries = summarize(records, seed)
    present = [quantity for quantity in quantities(records) if any(summary.values[quantity] for summary in summaries)]
    search = [quantity for quantity in present if quantity in SEARCH_QUANTITIES]
    engine = engine_quantities(present)
    unseen = [quantity for quantity in present if quantity not in SEARCH_QUANTITIES and quantity not in engine]
    texts = [unseen_label(stage) for stage in unseen_stages(records)]
    tests = comparisons(records, summaries, seed)
    test_rows = [("arms", "quantity", "test", "medians (a vs b)", "U or W+", "p one-sided (a lower)", "p two-sided",
                  "smallest attainable p", "Holm-adjusted p", "Cliff's delta", "p (means, exact permutation)")]  # fmt: skip
    for c in tests:
        b = f"{_number(c.median_b)} (single value)" if c.kind == ONE_SAMPLE else _number(c.median_b)
        tested = c.kind != NO_RESULT
        test_rows.append((f"{c.a} vs {c.b}", c.metric, _test_cell(c), f"{_number(c.median_a)} vs {b}", f"{c.u:g}" if tested else "-",
                          _p(c.p_less), _p(c.p_two_sided), _p(c.p_floor), _p(c.p_holm), f"{c.cliffs_delta:+.2f}" if tested else "-",
                          _p(c.p_permutation)))  # fmt: skip
    family = sum(1 for c in tests if c.kind != NO_RESULT)
    holm_note = (f"Holm-adjusted p: over the family of all {family} tests in this report (every row but those with no result)."
                 if family else "Holm-adjusted p: none, no test here had a result.")  # fmt: skip
    best = best_searcher(summaries)
    also = f", and the best searcher {best} (lowest arm mean of final KL) against every other arm" if best not in (None, reference_arm(records)) else ""
    blocks = [
        Block("h2", "Statistics"),
        Block("p", "Per arm: the arm mean over its runs (seeds) with a seeded percentile-bootstrap 95% interval (rows 'arm "
                   "mean over N seeds'), and the best single winner: the lowest value any one of its runs reached, each "
                   "quantity on its own, so one row may mix runs (rows 'best single winner', the run named). Final = the best "
                   "last-stage survivor of each run (lowest KL or perplexity, not necessarily its rank-1 winner); AUC = mean "
                   "best-so-far KL up to the smallest budget any run spent; tokens to baseline KL = evaluated tokens until the "
                   "run first matched the best uniform baseline within the bits budget ('never' runs are left out of the "
                   "interval and counted)." + _prior_note(records)),  # fmt: skip
        Block("p", "On the windows the search selected on:"),
        Block("table", rows=(("arm", "row", *search), *_arm_rows(summaries, search))),
    ]
    if unseen:
        where = ", ".join(f"'{text}' = " + ("the corpus's test split" if text == "test" else f"the text file {text}") for text in texts)
        blocks += [
            Block("p", "Out of sample: each run's rank-1 winner re-scored on every unseen text recorded, each text its own "
                       f"columns ({where or 'none recorded'}), and confirmed on the full arena's last stage (full arena):"),  # fmt: skip
            Block("table", rows=(("arm", "row", *unseen), *_arm_rows(summaries, unseen))),
        ]
    if engine:
        notes = " ".join(note for note in (stock_sentence(records.engine), order_sentence(summaries)) if note)
        blocks += [
            Block("p", engine_intro(engine_texts(records), engine_chunks(records.engine)) + (" " + notes if notes else "") + " Per arm:"),
            Block("table", rows=(("arm", "row", *engine), *_arm_rows(summaries, engine))),
        ]
    return blocks + [
        Block("p", f"Tests: reference arm {reference_arm(records)} against each other arm{also}, on every quantity both measured. "
                   "Two samples: the Mann-Whitney test, exact with ties (mid-ranks; the rank sum's distribution over every "
                   "split of the pooled values, enumerated: 252 splits at 5 vs 5). Against an arm that does not use the seed "
                   "and played once: a one-sample question, the exact Wilcoxon signed-rank test of the other arm's values "
                   "against its single value (sign-flip p of the mean in the last column). An arm that never produced a "
                   "value: no result, no test. Two-sided p = twice the smaller one-sided tail, at most 1. Smallest "
                   "attainable p: the lowest two-sided p the test could give on these sample sizes and ties (5 vs 5 "
                   "without ties: 2/252 = 0.0079; 5 runs against one value: 2/32 = 0.0625). " + holm_note + " Cliff's delta: "
                   "negative means the first arm is lower, i.e. better; lower is better for every quantity."),  # fmt: skip
        Block("table", rows=tuple(test_rows)),
        *[Block("p", c.sentence) for c in tests],
    ]


def _pattern_blocks(records: ComparisonRecords, facts, out: Path, seed: int) -> list[Block]:
    found = contrasts(played_first_stage(records), facts, seed)
    image = figures.patterns_plot(found, out / "patterns.png")
    if not found:
        return [Block("h2", "Survival patterns"), Block("p", "Too few strategies on both sides of any feature to contrast.")]
    rows = [("feature", "with / without", "survival with / without", "survival diff [95%]", "median log KL diff [95%]", "contradicts practice")]
    for c in found:
        kl = "-" if c.log_kl_diff is None else "{:+.3f} [{:+.3f}, {:+.3f}]".format(*c.log_kl_diff)
        rows.append((c.feature, f"{c.n_with} / {c.n_without}", f"{c.survival_with:.0%} / {c.survival_without:.0%}",
                     "{:+.2f} [{:+.2f}, {:+.2f}]".format(*c.survival_diff), kl, "YES" if c.contradicts else ""))  # fmt: skip
    called = [c.feature for c in found if c.contradicts]
    note = ("Contradicting common practice (interval excludes 0 on the unexpected side): " + "; ".join(called) + ".") if called else (
        "No contrast contradicts common practice with an interval that excludes 0.")
    return [
        Block("h2", "Survival patterns"),
        Block("p", "Over every strategy's first-stage match, pooled across arms and seeds: strategies with a feature against "
                   "those without it. These are associations over what the arms proposed, not controlled experiments. " + note),  # fmt: skip
        Block("table", rows=tuple(rows)),
        Block("img", "Differences with bootstrap 95% intervals", image=image),
    ]


def report_blocks(records: ComparisonRecords, out: Path, seed: int = 0) -> list[Block]:
    """Returns the report's blocks, writing its PNGs into `out`."""
    out.mkdir(parents=True, exist_ok=True)
    facts = load_facts(records.runs[0].arena.model)
    arena = records.runs[0].arena
    arms = ", ".join(f"{arm} ({len(records.of_arm(arm))} seeds)" for arm in records.arms)
    blocks = [
        Block("p", f"Arena {arena.name} (model {arena.model}, bits budget {arena.bits_budget}); arms: {arms}; "
                   f"baseline run: {'yes' if records.baseline else 'none'}; test re-evaluations: {len(records.tests)}."),  # fmt: skip
        *_preparation_blocks(records),
        *_plan_blocks(records, seed),
        *_statistics_blocks(records, seed),
        Block("h2", "Best so far"),
        Block("img", "Best surviving KL and perplexity against budget", image=figures.best_so_far_plot(records, out / "best_so_far.png")),
        Block("h2", "Pareto fronts"),
        Block("img", "Bits against KL per arm, uniform baselines marked x: near the budget (left), the whole range (right)", image=figures.pareto_plot(records, out / "pareto.png")),
        Block("h2", "Winners' bit maps"),
        Block("img", "Weight bits and group size (GGUF formats: the type llama.cpp stores) per layer and module of each arm's lowest-KL "
            "last-stage survivor over its seeds (not necessarily a run's rank-1 winner)", image=figures.bit_map_plot(records, facts, out / "bit_maps.png")),
        Block("h2", "Failure taxonomy"),
        Block("img", "Outcome of every search match, per arm (preparation left out)", image=figures.failure_plot(records, out / "failures.png")),
        Block("h2", "Search score against test score"),
    ]
    scatter = figures.search_vs_test_plot(records, out / "search_vs_test.png")
    blocks.append(Block("img", "Winners re-evaluated on unseen text", image=scatter) if scatter else Block("p", "No test re-evaluations recorded (DIR/test/)."))
    return blocks + _pattern_blocks(records, facts, out, seed)


def to_markdown(title: str, blocks: list[Block], relative_to: Path) -> str:
    """Returns the blocks as Markdown, images linked relative to `relative_to`."""
    lines = [f"# {title}", ""]
    for block in blocks:
        if block.kind == "h2":
            lines += [f"## {block.text}", ""]
        elif block.kind == "p":
            lines += [block.text, ""]
        elif block.kind == "table":
            header, *body = block.rows
            lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
            lines += ["| " + " | ".join(row) + " |" for row in body] + [""]
        elif block.image is not None:
            lines += [f"![{block.text}]({block.image.relative_to(relative_to).as_posix()})", ""]
        else:
            lines += [f"({block.text}: nothing to plot)", ""]
    return "\n".join(lines)


def to_html(title: str, blocks: list[Block]) -> str:
    """Returns the blocks as one self-contained HTML page (images inlined as base64 PNG)."""
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title><style>"
             "body{font-family:sans-serif;max-width:1150px;margin:2em auto;padding:0 1em}table{border-collapse:collapse;"
             "font-size:13px}td,th{border:1px solid #ccc;padding:3px 6px}img{max-width:100%}</style></head><body>",
             f"<h1>{html.escape(title)}</h1>"]  # fmt: skip
    for block in blocks:
        if block.kind == "h2":
            parts.append(f"<h2>{html.escape(block.text)}</h2>")
        elif block.kind == "p":
            parts.append(f"<p>{html.escape(block.text)}</p>")
        elif block.kind == "table":
            header, *body = block.rows
            cells = "".join(f"<th>{html.escape(cell)}</th>" for cell in header)
            rows = "".join("<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in row) + "</tr>" for row in body)
            parts.append(f"<table><tr>{cells}</tr>{rows}</table>")
        elif block.image is not None:
            data = base64.b64encode(block.image.read_bytes()).decode("ascii")
            parts.append(f"<figure><img alt='{html.escape(block.text)}' src='data:image/png;base64,{data}'><figcaption>{html.escape(block.text)}</figcaption></figure>")
        else:
            parts.append(f"<p>({html.escape(block.text)}: nothing to plot)</p>")
    return "\n".join(parts + ["</body></html>"])


def build_report(directory: Path, seed: int = 0) -> tuple[Path, Path]:
    """Returns the paths of DIR/report.md and DIR/report.html, rebuilt from the comparison's records (bootstrap
    and permutation draws seeded with `seed`)."""
    directory = Path(directory)
    records = read_comparison(directory)
    blocks = report_blocks(records, directory / FIGURES_DIR, seed)
    title = f"Comparison {directory.name}"
    markdown, page = directory / "report.md", directory / "report.html"
    markdown.write_text(to_markdown(title, blocks, directory), encoding="utf-8")
    page.write_text(to_html(title, blocks), encoding="utf-8")
    return markdown, page
