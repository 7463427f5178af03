"""Everything the terminal shows. The only module that imports rich."""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

from rich.console import Console
from rich.table import Table

from agentqat.models import ModelFacts
from agentqat.quality import Comparison, Reference

# Piped output (CI logs, `| tee`) gets wide tables instead of rich's 80-column default.
console = Console() if sys.stdout.isatty() else Console(width=160)


def facts_dict(facts: ModelFacts, directory: Path | None) -> dict:
    """Returns the model facts as a JSON-ready dict."""
    return {
        "name": facts.name,
        "directory": str(directory) if directory else None,
        "architecture": facts.architecture,
        "layers": facts.num_layers,
        "hidden_size": facts.hidden_size,
        "vocab_size": facts.vocab_size,
        "linear_modules": len(facts.linears),
        "parameters": facts.num_parameters,
        "bytes_fp32": facts.bytes_fp32,
        "bytes_bf16": facts.bytes_bf16,
        "linears": [
            {"name": l.name, "layer": l.layer, "in": l.in_features, "out": l.out_features} for l in facts.linears
        ],
    }


def print_info(report: dict, facts: ModelFacts) -> None:
    """Prints the `agentqat info` report: model facts, linear shapes by role, corpus sizes, perplexity."""
    model = report["model"]
    console.print(f"[bold]model[/bold] {model['name']} ({model['architecture']}) from {model['directory'] or 'the hub cache'}")
    console.print(
        f"  layers {model['layers']}, hidden {model['hidden_size']}, vocab {model['vocab_size']}, "
        f"{model['linear_modules']} linear modules, {model['parameters']:,} parameters "
        f"({model['bytes_fp32'] / 2**20:.1f} MiB fp32, {model['bytes_bf16'] / 2**20:.1f} MiB bf16)"
    )
    shapes = Counter((l.name.split(".", 3)[-1], l.in_features, l.out_features) for l in facts.linears)
    table = Table("module (per layer)", "in", "out", "count")
    for (role, fan_in, fan_out), count in shapes.items():
        table.add_row(role, str(fan_in), str(fan_out), str(count))
    console.print(table)
    corpus = report["corpus"]
    sizes = ", ".join(f"{split} {tokens:,}" for split, tokens in corpus["tokens"].items())
    console.print(f"[bold]corpus[/bold] {corpus['name']} ({corpus['source']}): tokens {sizes}")
    ppl = report["base_perplexity"]
    console.print(
        f"[bold]base perplexity[/bold] {ppl['value']:.2f} on {ppl['windows']} x {ppl['window_tokens']} "
        f"{ppl['split']} tokens (seed {ppl['seed']}, {ppl['seconds']:.1f} s)"
    )


def print_invalid(path: str, lines: list[str]) -> None:
    """Prints why a strategy file is invalid, one line per problem."""
    console.print(f"[red]invalid[/red] {path}", highlight=False)
    for line in lines:
        console.print(f"  {line}", highlight=False, soft_wrap=True)


def print_valid(path: str, resolved, facts: ModelFacts) -> None:
    """Prints that a strategy is valid for a model, with its effective bits per weight."""
    from agentqat.bits import strategy_bits

    bits = strategy_bits(resolved, facts)
    console.print(
        f"[green]valid[/green] {path}: {len(resolved.modules)} modules of {facts.name}, "
        f"{bits.bits_per_weight:.3f} effective bits per weight (outliers estimated), "
        f"{bits.model_bytes / 2**20:.1f} MiB",
        highlight=False,
    )


def _quality(comparison: Comparison) -> dict:
    return {
        "perplexity": comparison.perplexity,
        "kl": comparison.kl.mean().item(),
        "top1_agreement": comparison.top1.mean().item(),
        "finite": comparison.finite,
    }


def quantize_report(strategy, reference: Reference, result: Comparison, bits, seconds: float, options: dict) -> dict:
    """Returns the `agentqat quantize` report as a JSON-ready dict."""
    return {
        "strategy": strategy.name,
        "base": {"perplexity": reference.perplexity, "kl": 0.0, "top1_agreement": 1.0, "finite": True},
        "quantized": _quality(result),
        "bits_per_weight": bits.bits_per_weight,
        "model_bytes": bits.model_bytes,
        "quantize_seconds": seconds,
        "options": {k: v for k, v in options.items() if k not in ("handler",)},
    }


def print_quantize(report: dict) -> None:
    """Prints the `agentqat quantize` report as a table."""
    table = Table("", "perplexity", "KL to base", "top-1 agreement", title=f"strategy {report['strategy']}")
    for label in ("base", "quantized"):
        q = report[label]
        table.add_row(label, f"{q['perplexity']:.3f}", f"{q['kl']:.4f}", f"{q['top1_agreement']:.3f}")
    console.print(table)
    console.print(
        f"effective bits per weight {report['bits_per_weight']:.3f}, model {report['model_bytes'] / 2**20:.1f} MiB, "
        f"quantized in {report['quantize_seconds']:.1f} s"
    )


class MatchProgress:
    """A live progress bar of matches with failure counts; plain lines when stdout is not a terminal."""

    def __init__(self, total: int):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.total = total
        self.failures: Counter = Counter()
        self.progress = Progress(
            TextColumn("matches"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            TextColumn("{task.fields[status]}"), console=console, transient=False,
        )
        self.task = self.progress.add_task("matches", total=total, status="")

    def __enter__(self) -> "MatchProgress":
        if console.is_terminal:
            self.progress.start()
        return self

    def __exit__(self, *exc) -> None:
        if console.is_terminal:
            self.progress.stop()

    def update(self, result) -> None:
        """Counts one finished match and shows it."""
        if result.failed:
            self.failures[result.outcome] += 1
        status = ", ".join(f"{k} {v}" for k, v in sorted(self.failures.items())) or "no failures"
        self.progress.update(self.task, advance=1, status=status)
        if not console.is_terminal:
            quality = result.quality
            detail = f"ppl {quality.perplexity:.2f} KL {quality.kl:.4f}" if quality else result.message[:80]
            print(f"match {result.strategy_name} {result.stage}/set{result.window_set}: {result.outcome} {detail} ({result.seconds:.1f} s)", flush=True)


def _number(value, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def print_leaderboard(rows, title: str) -> None:
    """Prints a stage's leaderboard: rank, strategy, outcome, quality with CIs, bits, score, Pareto rank."""
    table = Table("#", "strategy", "outcome", "ppl", "ppl 95% CI", "KL", "top-1", "cloze", "QA", "bits/w", "score", "front", title=title)
    for row in rows:
        agg = row.aggregate
        ci = "-" if agg.perplexity_ci is None else f"{agg.perplexity_ci[0]:.2f}-{agg.perplexity_ci[1]:.2f}"
        outcome = agg.outcome if agg.failed else ("ok" if row.survives else "over budget")
        table.add_row(
            str(row.rank), agg.strategy_name, outcome, _number(agg.perplexity, 2), ci, _number(agg.kl, 4),
            _number(agg.top1, 3), _number(agg.cloze_accuracy, 3), _number(agg.qa_exact_match, 3),
            _number(agg.bits_per_weight, 3), "-" if row.score == float("-inf") else f"{row.score:.3f}",
            "-" if row.pareto_rank is None else str(row.pareto_rank),
        )
    console.print(table)
    for row in rows:
        if row.aggregate.failed:
            console.print(f"  {row.aggregate.strategy_name}: {row.reason}", highlight=False, soft_wrap=True)


def print_cache_stats(stats: list[dict], replayed: int) -> None:
    """Prints each worker's layer-cache hit rate and how many matches came from the run record."""
    for index, worker in enumerate(stats):
        total = worker["hits"] + worker["misses"]
        rate = worker["hits"] / total if total else 0.0
        console.print(f"worker-{index}: layer cache {worker['hits']}/{total} hits ({rate:.0%}), {worker['bytes'] / 2**20:.0f} MiB")
    if replayed:
        console.print(f"{replayed} matches were already recorded in the run and not played again")
