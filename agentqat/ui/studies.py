"""Tables of the studies on one strategy or arena: a polish against the unpolished strategy, the polish ablation,
and the sensitivity map's rank correlations."""

from __future__ import annotations

import math
from collections.abc import Sequence

from rich.table import Table

from agentqat.ui.tables import console


def _mean(results, field: str) -> float | None:
    values = [getattr(r.quality, field) for r in results if r.quality is not None]
    if not values:
        return None
    if field == "perplexity":  # windows sets of equal size: the pooled perplexity is the geometric mean
        return math.exp(sum(math.log(v) for v in values) / len(values))
    return sum(values) / len(values)


def _cell(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def print_polish(outcome) -> None:
    """Prints a polish: per block the reconstruction loss before and after, then per stage (the arena's, the held-out
    split, the test split: the final strategy's only) perplexity and KL of the base, unpolished and polished strategy."""
    blocks = Table("block", "widths", "MSE before", "MSE after", "kept", "epochs", "seconds", title=f"polish of {outcome.document.get('name', 'strategy')}")
    for block in outcome.polish.blocks:
        blocks.add_row(str(block.layer), ">".join(map(str, block.bits)), f"{block.loss_before:.4g}", f"{block.loss_after:.4g}",
                       "yes" if block.kept else "no (unpolished)", str(block.epochs), f"{block.seconds:.0f}")  # fmt: skip
    console.print(blocks)
    table = Table("stage", "strategy", "outcome", "ppl", "KL", "top-1", "bits/w", title="unpolished against polished")
    stages = dict.fromkeys(r.stage for r in (*outcome.unpolished, *outcome.polished))
    for stage in stages:
        base = [r for r in (*outcome.unpolished, *outcome.polished) if r.stage == stage]
        table.add_row(stage, "base", "", _cell(_mean(base, "base_perplexity"), 3), "0", "1", "16")
        for label, results in (("unpolished", outcome.unpolished), ("polished", outcome.polished)):
            played = [r for r in results if r.stage == stage]
            if not played:
                continue
            bits = next((r.cost.bits_per_weight for r in played if r.cost), None)
            outcomes = ",".join(sorted({r.outcome for r in played}))
            table.add_row(stage, label, outcomes, _cell(_mean(played, "perplexity"), 3), _cell(_mean(played, "kl"), 4), _cell(_mean(played, "top1"), 3), _cell(bits, 3))
    console.print(table)
    console.print(f"final strategy, chosen on held-out text: {getattr(outcome, 'selected', 'polished')} (only it is played on the test split)")
    console.print(f"polished in {outcome.polish.seconds:.0f} s; records in {outcome.directory}")


def print_ablation(rows: Sequence) -> None:
    """Prints the polish ablation: one row per (bits, scales, order, curriculum), unpolished against polished."""
    table = Table("bits", "scales", "order", "curriculum", "ppl before", "ppl after", "KL before", "KL after", "KL change", "seconds", title="polish ablation (arena's last stage)")
    for row in rows:
        before, after = _mean(row.unpolished, "kl"), _mean(row.polished, "kl")
        change = None if before is None or after is None or before == 0 else (after - before) / before
        table.add_row(
            str(row.bits), "pow2 learned" if row.pow2 else "fp16", row.order, "on" if row.curriculum else "off",
            _cell(_mean(row.unpolished, "perplexity"), 3), _cell(_mean(row.polished, "perplexity"), 3),
            _cell(before, 4), _cell(after, 4), "-" if change is None else f"{change:+.1%}", f"{row.seconds:.0f}",
        )  # fmt: skip
    console.print(table)


def print_sensitivity(sensitivity_map, path) -> None:
    """Prints the sensitivity map: per layer and per role Fisher, gradient norm and KL per width, then the per-layer
    rank correlations."""
    kl_columns = [f"KL {b}b" for b in sensitivity_map.bits]
    for title, rows in (("layer", sensitivity_map.layers), ("role", sensitivity_map.roles)):
        table = Table(title, "Fisher", "grad norm", *kl_columns, title=f"sensitivity per {title} ({sensitivity_map.arena})")
        for key, measures in rows.items():
            table.add_row(str(key), f"{measures.fisher:.3g}", f"{measures.gradient_norm:.3g}", *(f"{measures.kl[b]:.4g}" for b in sensitivity_map.bits))
        console.print(table)
    table = Table("measures", "Spearman rho", title="rank correlations over layers")
    for pair, rho in sensitivity_map.correlations.items():
        table.add_row(pair.replace("~", " vs "), _cell(rho, 3))
    console.print(table)
    source = "read from the cache" if sensitivity_map.cached else f"measured in {sensitivity_map.seconds:.0f} s"
    console.print(f"{sensitivity_map.matches} probe matches, {sensitivity_map.tokens:,} tokens, {source}: {path} (heat map {path.with_suffix('.png')})")
