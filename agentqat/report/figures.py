"""The report's plots, as matplotlib figures saved to PNG (Agg backend, no display). Each function returns the
path it wrote, or None when the records hold nothing to plot."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import ScalarFormatter  # noqa: E402

from agentqat.models import ModelFacts  # noqa: E402
from agentqat.report.analysis import common_grid, curves  # noqa: E402
from agentqat.report.patterns import Contrast  # noqa: E402
from agentqat.report.records import ComparisonRecords  # noqa: E402
from agentqat.resolve import layered_configs  # noqa: E402
from agentqat.strategy import parse_strategy  # noqa: E402

DPI = 110
COLORS = plt.get_cmap("tab10")
FAILURE_KINDS = ("ok", "over budget", "collapse", "nan", "overflow", "error", "timeout", "invalid")


def _color(records: ComparisonRecords, arm: str):
    return COLORS(records.arms.index(arm) % 10)


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def best_so_far_plot(records: ComparisonRecords, path: Path) -> Path:
    """Best-so-far KL and perplexity against tokens and matches: median over seeds, band from min to max."""
    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5))
    for column, budget in enumerate(("tokens", "matches")):
        grid = common_grid(records, budget)
        for row, metric in enumerate(("kl", "perplexity")):
            ax = axes[row][column]
            for arm in records.arms:
                values = curves(records, arm, metric, budget, grid).runs
                values = np.where(np.isfinite(values), values, np.nan)
                if np.isnan(values).all():
                    continue
                with warnings.catch_warnings():  # grid points before any run's first survivor are all-NaN
                    warnings.simplefilter("ignore", RuntimeWarning)
                    median, low, high = np.nanmedian(values, 0), np.nanmin(values, 0), np.nanmax(values, 0)
                color = _color(records, arm)
                ax.plot(grid, median, color=color, label=f"{arm} (median of {len(values)})")
                ax.fill_between(grid, low, high, color=color, alpha=0.18, linewidth=0)
            if records.baseline and (best := records.baseline.best_within_budget(metric)):
                ax.axhline(getattr(best.aggregate, metric), color="black", linestyle="--", linewidth=1,
                           label=f"best uniform baseline ({best.aggregate.strategy_name})")  # fmt: skip
            ax.set_xlabel(f"budget spent ({budget})")
            ax.set_ylabel(f"best {'KL (nats/token)' if metric == 'kl' else 'perplexity'} so far")
            ax.set_yscale("log")
            ax.yaxis.set_major_formatter(ScalarFormatter())  # plain numbers: a narrow range shows 0.559, not 5.59e-1
            ax.yaxis.set_minor_formatter(ScalarFormatter())
            ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.suptitle("Best surviving strategy so far (last stage): median over seeds, band = min..max")
    return _save(fig, path)


def _front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Returns the points no other point beats on both bits and KL, by bits."""
    front, best = [], math.inf
    for bits, kl in sorted(points):
        if kl < best:
            front.append((bits, kl))
            best = kl
    return front


def pareto_plot(records: ComparisonRecords, path: Path) -> Path:
    """Bits per weight against KL of every strategy each arm brought to the last stage, with each arm's front
    and the uniform baselines."""
    fig, ax = plt.subplots(figsize=(9, 6))
    for arm in records.arms:
        points = [(row.aggregate.bits_per_weight, row.aggregate.kl) for run in records.of_arm(arm) for row in run.rows if not row.aggregate.failed]
        if not points:
            continue
        color = _color(records, arm)
        ax.scatter(*zip(*points), s=12, alpha=0.35, color=color)
        ax.step(*zip(*_front(points)), where="post", color=color, label=f"{arm} front")
    if records.baseline:
        measured = sorted((row.aggregate.bits_per_weight, row.aggregate.kl, row.aggregate.strategy_name) for row in records.baseline.rows if not row.aggregate.failed)
        for k, (bits, kl, name) in enumerate(measured):  # labels alternate sides so that neighbours stay legible
            ax.scatter(bits, kl, marker="x", color="black", s=30)
            ax.annotate(name, (bits, kl), fontsize=7, xytext=(5 if k % 2 else -5, 0), textcoords="offset points",
                        ha="left" if k % 2 else "right", va="center")  # fmt: skip
    budget = records.runs[0].arena.bits_budget
    ax.axvline(budget, color="grey", linestyle=":", label=f"bits budget {budget}")
    ax.set_xlabel("effective bits per weight")
    ax.set_ylabel("KL (nats/token), last stage")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("Pareto fronts per arm (x: uniform baselines)")
    return _save(fig, path)


def bit_map_plot(records: ComparisonRecords, facts: ModelFacts, path: Path) -> Path | None:
    """Weight bits of each arm's lowest-KL last-stage survivor over its seeds (not necessarily a run's rank-1
    winner, the strategy in winners/): layers by modules."""
    winners = []
    for arm in records.arms:
        best = [(row.aggregate.kl, run, row) for run in records.of_arm(arm) if (row := run.best("kl"))]
        if best:
            _, run, row = min(best, key=lambda item: item[0])
            winners.append((arm, run, row))
    if not winners:
        return None
    modules = sorted({info.name.split(f".{info.layer}.", 1)[1] for info in facts.linears})
    fig, axes = plt.subplots(1, len(winners), figsize=(2.2 + 2.0 * len(winners), 1.5 + 0.16 * facts.num_layers), squeeze=False)
    for ax, (arm, run, row) in zip(axes[0], winners):
        configs = layered_configs(parse_strategy(run.documents[row.strategy_id]), facts)
        grid = np.full((facts.num_layers, len(modules)), np.nan)
        for info in facts.linears:
            grid[info.layer, modules.index(info.name.split(f".{info.layer}.", 1)[1])] = configs[info.name].weight.bits
        image = ax.imshow(grid, aspect="auto", cmap="viridis", vmin=2, vmax=8, interpolation="nearest")
        ax.set_xticks(range(len(modules)), [m.rsplit(".", 1)[-1] for m in modules], rotation=90, fontsize=7)
        ax.set_yticks(range(0, facts.num_layers, max(1, facts.num_layers // 10)))
        ax.set_ylabel("layer")
        ax.set_title(f"{arm}\n{run.name}, KL {row.aggregate.kl:.3g}\n{row.aggregate.bits_per_weight:.3f} bits", fontsize=8)
    fig.colorbar(image, ax=axes[0].tolist(), label="weight bits (16 shown as 8+)", shrink=0.8)
    fig.suptitle("Each arm's lowest-KL last-stage survivor over its seeds (not necessarily a run's rank-1 winner)", fontsize=9)
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return path


def failure_plot(records: ComparisonRecords, path: Path) -> Path:
    """Share of each arm's matches by outcome (over budget: ok, but past the bits budget), stacked."""
    fig, ax = plt.subplots(figsize=(9, 0.9 + 0.6 * len(records.arms)))
    left = np.zeros(len(records.arms))
    counts = {kind: np.zeros(len(records.arms)) for kind in FAILURE_KINDS}
    for index, arm in enumerate(records.arms):
        for run in records.of_arm(arm):
            for result in run.results:
                over = result.outcome == "ok" and result.cost and result.cost.bits_per_weight > run.arena.bits_budget + 1e-9
                counts["over budget" if over else result.outcome][index] += 1
    totals = sum(counts.values())
    for k, kind in enumerate(FAILURE_KINDS):
        share = np.divide(counts[kind], totals, out=np.zeros_like(totals), where=totals > 0)
        if share.any():
            ax.barh(records.arms, share, left=left, color=plt.get_cmap("tab20")(k), label=kind)
            left += share
    ax.set_xlabel("share of matches")
    ax.set_xlim(0, 1)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    ax.set_title("Failure taxonomy per arm (every match)")
    return _save(fig, path)


def search_vs_test_plot(records: ComparisonRecords, path: Path) -> Path | None:
    """KL of each re-evaluated winner on its run's last stage against its KL on unseen text: colour = arm,
    marker = the unseen text (the corpus's test split, or a --test-corpus file)."""
    arm_of_run = {run.name: run.arm for run in records.runs}
    points = [(arm_of_run.get(r.extra["run"], r.extra["generator"]), r.stage, r.extra["search"]["kl"], r.quality.kl)
              for r in records.tests if r.quality and r.extra["search"].get("kl") is not None]  # fmt: skip
    if not points:
        return None
    sources = sorted({stage for _, stage, _, _ in points})
    marker = dict(zip(sources, "o^sDv"))
    fig, ax = plt.subplots(figsize=(6.5, 5.5))
    for arm in records.arms:
        for source in sources:
            mine = [(s, t) for a, stage, s, t in points if a == arm and stage == source]
            if mine:
                ax.scatter(*zip(*mine), color=_color(records, arm), marker=marker.get(source, "o"), s=25)
    for arm in (arm for arm in records.arms if any(a == arm for a, _, _, _ in points)):
        ax.scatter([], [], color=_color(records, arm), marker="o", label=arm)
    for source in sources:
        ax.scatter([], [], color="grey", marker=marker.get(source, "o"), label=_unseen_label(source))
    low, high = min(min(s, t) for _, _, s, t in points), max(max(s, t) for _, _, s, t in points)
    ax.plot([low, high], [low, high], color="grey", linestyle=":", label="test = search")
    ax.set_xlabel("search KL (last stage, the windows it was selected on)")
    ax.set_ylabel("test KL (unseen text)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("Winners: search score against test score")
    return _save(fig, path)


def _unseen_label(stage: str) -> str:
    """Returns a legend label for a re-evaluation stage: "test" or "test:<file name>"."""
    return "the corpus's test split" if stage == "test" else stage.partition(":")[2]


def patterns_plot(found: list[Contrast], path: Path) -> Path | None:
    """Each feature's difference in survival rate and in median log KL (with - without), 95% intervals."""
    if not found:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(11, 0.8 + 0.42 * len(found)), sharey=True)
    labels = [f"{c.feature} ({c.n_with}/{c.n_without})" for c in found]
    for ax, title, key in ((axes[0], "survival rate, with - without", "survival_diff"), (axes[1], "median log KL, with - without", "log_kl_diff")):
        for y, contrast in enumerate(found):
            value = getattr(contrast, key)
            if value is None:
                continue
            color = "crimson" if contrast.contradicts and key == "log_kl_diff" else "black"
            ax.errorbar(value[0], y, xerr=[[value[0] - value[1]], [value[2] - value[0]]], fmt="o", color=color, capsize=3)
        ax.axvline(0, color="grey", linewidth=1)
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3, axis="x")
    axes[0].set_yticks(range(len(found)), labels, fontsize=8)
    axes[0].invert_yaxis()
    fig.suptitle("Survival patterns over every first-stage match (red: contradicts common practice)", fontsize=10)
    return _save(fig, path)
