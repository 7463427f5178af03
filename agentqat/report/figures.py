"""The report's plots, as matplotlib figures saved to PNG (Agg backend, no display). Each function returns the
path it wrote, or None when the records hold nothing to plot."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.colors  # noqa: E402
import matplotlib.patches  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import ScalarFormatter  # noqa: E402

from agentqat.models import ModelFacts  # noqa: E402
from agentqat.quant.base import INT_GRID  # noqa: E402
from agentqat.quant.ggml_engine import ENGINE_TYPE_OF_FORMAT, stored_type
from agentqat.report.analysis import common_grid, curves  # noqa: E402
from agentqat.report.patterns import Contrast  # noqa: E402
from agentqat.report.records import ComparisonRecords, is_preparation  # noqa: E402
from agentqat.strategy.document import parse_strategy  # noqa: E402
from agentqat.strategy.resolve import layered_configs  # noqa: E402

DPI = 110
COLORS = plt.get_cmap("tab10")
FAILURE_KINDS = ("ok", "over budget", "collapse", "nan", "overflow", "error", "timeout", "invalid")
ZOOM_KL = 1.12  # the Pareto plot's near-budget panel: KL up to 12% above the best within budget


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


def _arm_points(records: ComparisonRecords) -> dict[str, list[tuple[float, float]]]:
    """Returns per arm the (bits per weight, KL) of every strategy it brought to the last stage without failing."""
    points = {}
    for arm in records.arms:
        found = [(row.aggregate.bits_per_weight, row.aggregate.kl) for run in records.of_arm(arm) for row in run.rows if not row.aggregate.failed]
        if found:
            points[arm] = found
    return points


def zoom_window(points: list[tuple[float, float]], budget: float, reference: float | None) -> tuple[tuple[float, float], tuple[float, float]] | None:
    """Returns the ((bits low, high), (KL low, high)) of the budget's neighbourhood: the strategies within budget
    whose KL is within ZOOM_KL of the best there (up to `reference`, the best uniform baseline within budget, where
    that lies above), up to the budget itself; None without a point within budget."""
    within = [kl for bits, kl in points if bits <= budget + 1e-9]
    if not within:
        return None
    best = min(within)
    top = best * ZOOM_KL
    if reference is not None and reference > best:
        top = max(top, min(reference * 1.05, best * 2))
    shown = [(bits, kl) for bits, kl in points if kl <= top and bits <= budget + 1e-9]
    low_bits, high_bits = min(bits for bits, _ in shown), budget
    pad = max(0.005, 0.06 * (high_bits - low_bits))
    return (low_bits - pad, high_bits + pad), (best - 0.04 * (top - best), top)


def _pareto_panel(ax, records: ComparisonRecords, points: dict[str, list[tuple[float, float]]], window=None) -> None:
    """Draws every arm's points and front, the uniform baselines and the budget on `ax` (within `window` when given)."""
    inside = (lambda bits, kl: True) if window is None else (
        lambda bits, kl: window[0][0] <= bits <= window[0][1] and window[1][0] <= kl <= window[1][1])  # fmt: skip
    for arm, found in points.items():
        color = _color(records, arm)
        ax.scatter(*zip(*found), s=12 if window is None else 18, alpha=0.35 if window is None else 0.55, color=color)
        ax.step(*zip(*_front(found)), where="post", color=color, label=f"{arm} front")
    if records.baseline:
        measured = sorted((row.aggregate.bits_per_weight, row.aggregate.kl, row.aggregate.strategy_name) for row in records.baseline.rows if not row.aggregate.failed)
        measured = [point for point in measured if inside(point[0], point[1])]
        for k, (bits, kl, name) in enumerate(measured):  # labels alternate sides so that neighbours stay legible
            ax.scatter(bits, kl, marker="x", color="black", s=30, zorder=3)
            ax.annotate(name, (bits, kl), fontsize=7, xytext=(5 if k % 2 else -5, 0), textcoords="offset points",
                        ha="left" if k % 2 else "right", va="center")  # fmt: skip
    budget = records.runs[0].arena.bits_budget
    ax.axvline(budget, color="grey", linestyle=":", label=f"bits budget {budget}")
    ax.set_xlabel("effective bits per weight")
    ax.grid(alpha=0.3)
    if window is not None:
        ax.set_xlim(*window[0])
        ax.set_ylim(*window[1])


def pareto_plot(records: ComparisonRecords, path: Path) -> Path:
    """Bits per weight against KL of every strategy each arm brought to the last stage, with each arm's front and
    the uniform baselines: left, the budget's neighbourhood (`zoom_window`, linear KL); right, the whole range
    (log KL) with the neighbourhood boxed."""
    points = _arm_points(records)
    budget = records.runs[0].arena.bits_budget
    reference = records.baseline.best_within_budget("kl") if records.baseline else None
    window = zoom_window([p for found in points.values() for p in found], budget, reference.aggregate.kl if reference else None)
    if window is None:
        fig, whole = plt.subplots(figsize=(9, 6))
    else:
        fig, (zoom, whole) = plt.subplots(1, 2, figsize=(15, 6.2), gridspec_kw={"width_ratios": [1.35, 1]})
        _pareto_panel(zoom, records, points, window)
        zoom.set_ylabel("KL (nats/token), last stage")
        zoom.legend(fontsize=8)
        zoom.set_title(f"Near the budget: within {ZOOM_KL - 1:.0%} of the best KL within budget (linear KL)", fontsize=10)
    _pareto_panel(whole, records, points)
    whole.set_yscale("log")
    whole.set_ylabel("KL (nats/token), last stage")
    if window is None:
        whole.legend(fontsize=8)
        if not points:
            whole.text(0.5, 0.5, "no strategy of any arm reached the last stage without failing", transform=whole.transAxes,
                       ha="center", va="center", fontsize=10, color="crimson")  # fmt: skip
    else:
        (x0, x1), (y0, y1) = window
        whole.add_patch(plt.Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor="black", linewidth=1, linestyle="--"))
        whole.set_title("Whole range (log KL); dashed box: the left panel", fontsize=10)
    fig.suptitle("Pareto fronts per arm (x: uniform baselines)")
    return _save(fig, path)


def _gene_label(config, info) -> str:
    """Returns what a module's weight is besides its bits: its GGUF type (GGUF formats; "Q3_K as Q4_0" where
    llama.cpp stores a fallback type on rows the type's block does not divide), else the group size ("g64", "per-channel"), with any format but the integer grid named first; "16-bit" unquantized."""
    weight = config.weight
    if weight.bits >= 16:
        return "16-bit"
    if weight.format.startswith("gguf_"):
        engine = ENGINE_TYPE_OF_FORMAT.get(weight.format)
        if engine is None:
            return weight.format.removeprefix("gguf_").upper()
        stored = stored_type(engine.type_name, info.in_features)  # a 256-block type on a row it does not divide
        return engine.type_name if stored == engine.type_name else f"{engine.type_name} as {stored}"
    group = "per-channel" if weight.group_size == 0 else f"g{weight.group_size}"
    return group if weight.format == INT_GRID else f"{weight.format} {group}"


def _label_order(label: str) -> tuple:
    """Sorts gene labels: group sizes by size (per-channel last), then the rest by name, 16-bit at the end."""
    if label == "16-bit":
        return (3, 0, label)
    if label.startswith("g") and label[1:].isdigit():
        return (0, int(label[1:]), label)
    return (1 if label == "per-channel" else 2, 0, label)


def bit_map_plot(records: ComparisonRecords, facts: ModelFacts, path: Path) -> Path | None:
    """Weight bits and group size (GGUF formats: the type llama.cpp stores) of each arm's lowest-KL last-stage
    survivor over its seeds (not necessarily a run's rank-1 winner, the strategy in winners/): layers by modules,
    one pair of panels per arm."""
    winners = []
    for arm in records.arms:
        best = [(row.aggregate.kl, run, row) for run in records.of_arm(arm) if (row := run.best("kl"))]
        if best:
            _, run, row = min(best, key=lambda item: item[0])
            winners.append((arm, run, row))
    if not winners:
        return None
    modules = sorted({info.name.split(f".{info.layer}.", 1)[1] for info in facts.linears})
    grids, gguf = [], False
    for arm, run, row in winners:
        configs = layered_configs(parse_strategy(run.documents[row.strategy_id]), facts)
        gguf = gguf or any(config.weight.format.startswith("gguf_") for config in configs.values())
        bits = np.full((facts.num_layers, len(modules)), np.nan)
        labels = np.full((facts.num_layers, len(modules)), "", dtype=object)
        for info in facts.linears:
            cell = (info.layer, modules.index(info.name.split(f".{info.layer}.", 1)[1]))
            bits[cell], labels[cell] = configs[info.name].weight.bits, _gene_label(configs[info.name], info)
        grids.append((bits, labels))
    kinds = sorted({label for _, labels in grids for label in labels.flat if label}, key=_label_order)
    palette = plt.get_cmap("tab20" if len(kinds) > 10 else "tab10")
    kind_colors = matplotlib.colors.ListedColormap([palette(k % palette.N) for k in range(len(kinds))])
    fig = plt.figure(figsize=(1.2 + 3.1 * len(winners), 2.1 + 0.16 * facts.num_layers))
    *subfigures, side = np.atleast_1d(fig.subfigures(1, len(winners) + 1, wspace=0.02, width_ratios=[1] * len(winners) + [0.35]))
    ticks = [m.rsplit(".", 1)[-1] for m in modules]
    for subfigure, (arm, run, row), (bits, labels) in zip(subfigures, winners, grids):
        left, right = subfigure.subplots(1, 2, sharey=True)
        image = left.imshow(bits, aspect="auto", cmap="viridis", vmin=2, vmax=8, interpolation="nearest")
        codes = np.vectorize(lambda label: kinds.index(label) if label else -1, otypes=[float])(labels)
        right.imshow(np.where(codes < 0, np.nan, codes), aspect="auto", cmap=kind_colors, vmin=-0.5, vmax=len(kinds) - 0.5, interpolation="nearest")
        for ax, title in ((left, "bits"), (right, "type" if gguf else "group")):
            ax.set_xticks(range(len(modules)), ticks, rotation=90, fontsize=6)
            ax.set_title(title, fontsize=8)
        left.set_yticks(range(0, facts.num_layers, max(1, facts.num_layers // 10)))
        left.set_ylabel("layer")
        subfigure.suptitle(f"{arm}\n{run.name}\nKL {row.aggregate.kl:.3g}, {row.aggregate.bits_per_weight:.3f} bits", fontsize=8)
    fig.colorbar(image, cax=side.add_axes((0.15, 0.2, 0.2, 0.6)), label="weight bits (16 shown as 8+)")
    handles = [matplotlib.patches.Patch(color=kind_colors(k), label=kind) for k, kind in enumerate(kinds)]
    fig.legend(handles=handles, title="GGUF type (as llama.cpp stores it)" if gguf else "group size (weights per scale)", loc="lower center",
               ncol=min(len(kinds), 8), fontsize=7, title_fontsize=8, bbox_to_anchor=(0.5, -0.02))  # fmt: skip
    fig.suptitle("Each arm's lowest-KL last-stage survivor over its seeds (not necessarily a run's rank-1 winner): "
                 "bits and " + ("GGUF type" if gguf else "group size") + " per module", fontsize=9, y=1.02)  # fmt: skip
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return path


def failure_plot(records: ComparisonRecords, path: Path) -> Path:
    """Share of each arm's search matches by outcome (over budget: ok, but past the bits budget), stacked.
    Preparation played inside a run (the knapsack's unit probes in runs recorded before it was shared: every module
    but one unit at 16 bits) is neither a failure nor over budget: it is left out, and its count named beside the arm."""
    fig, ax = plt.subplots(figsize=(9, 0.9 + 0.6 * len(records.arms)))
    left = np.zeros(len(records.arms))
    counts = {kind: np.zeros(len(records.arms)) for kind in FAILURE_KINDS}
    labels = []
    for index, arm in enumerate(records.arms):
        prepared = 0
        for run in records.of_arm(arm):
            for result in run.results:
                if is_preparation(result):
                    prepared += 1
                    continue
                over = result.outcome == "ok" and result.cost and result.cost.bits_per_weight > run.arena.bits_budget + 1e-9
                counts["over budget" if over else result.outcome][index] += 1
        searched = sum(counts[kind][index] for kind in FAILURE_KINDS)
        labels.append(f"{arm}\n(+{prepared} preparation probes, not shown{'' if searched else '; no search match'})" if prepared else arm)
    totals = sum(counts.values())
    for k, kind in enumerate(FAILURE_KINDS):
        share = np.divide(counts[kind], totals, out=np.zeros_like(totals), where=totals > 0)
        if share.any():
            ax.barh(labels, share, left=left, color=plt.get_cmap("tab20")(k), label=kind)
            left += share
    ax.set_xlabel("share of search matches")
    ax.set_xlim(0, 1)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    ax.set_title("Failure taxonomy per arm (every search match; preparation left out)")
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
