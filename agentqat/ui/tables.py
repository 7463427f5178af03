"""Tables and reports the terminal shows: model facts, validation, quantize reports, leaderboards, runs."""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:  # imported lazily: the first screen must not wait for torch
    from agentqat.models import ModelFacts

# Piped output (CI logs, `| tee`) gets wide tables instead of rich's 80-column default.
console = Console() if sys.stdout.isatty() else Console(width=160)


def facts_dict(facts: "ModelFacts", directory: Path | None) -> dict:
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


def print_info(report: dict, facts: "ModelFacts") -> None:
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
    bos = report["bos"]
    opening = f"open with BOS (token {bos['token_id']})" if bos["windows_open_with_bos"] else "start with text (no BOS)"
    console.print(f"[bold]windows[/bold] {opening}, as decided by {bos['decided_by']}", highlight=False)
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


def print_valid(path: str, resolved, facts: "ModelFacts") -> None:
    """Prints that a strategy is valid for a model, with its effective bits per weight."""
    from agentqat.strategy.bits import strategy_bits

    bits = strategy_bits(resolved, facts)
    console.print(
        f"[green]valid[/green] {path}: {len(resolved.modules)} modules of {facts.name}, "
        f"{bits.bits_per_weight:.3f} effective bits per weight (outliers estimated), "
        f"{bits.model_bytes / 2**20:.1f} MiB",
        highlight=False,
    )


def quantize_report(result, options: dict) -> dict:
    """Returns the `agentqat quantize` report of a played match (MatchResult) as a JSON-ready dict."""
    quality, cost = result.quality, result.cost
    return {
        "strategy": result.strategy_name,
        "outcome": result.outcome,
        "base": {"perplexity": quality.base_perplexity, "kl": 0.0, "top1_agreement": 1.0, "finite": True},
        "quantized": {
            "perplexity": quality.perplexity,
            "kl": quality.kl,
            "top1_agreement": quality.top1,
            "finite": result.outcome not in ("nan", "overflow"),
        },
        "bits_per_weight": cost.bits_per_weight,
        "model_bytes": cost.model_bytes,
        "quantize_seconds": cost.quantize_seconds,
        "options": {k: str(v) if isinstance(v, Path) else v for k, v in options.items() if k not in ("handler",)},
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


def _number(value, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def print_leaderboard(rows, title: str) -> None:
    """Prints a stage's leaderboard: rank, strategy, outcome, quality with CIs, bits, score, Pareto rank; and the
    engine's decode ms per token and peak memory where the rows carry engine costs (a measured vllm-* target)."""
    engine = any(row.aggregate.engine_ms_per_token is not None for row in rows)
    columns = ("engine ms/tok", "engine GiB") if engine else ()
    table = Table("#", "strategy", "outcome", "ppl", "ppl 95% CI", "KL", "top-1", "cloze", "QA", "bits/w", *columns, "score", "front", title=title)
    for row in rows:
        agg = row.aggregate
        ci = "-" if agg.perplexity_ci is None else f"{agg.perplexity_ci[0]:.2f}-{agg.perplexity_ci[1]:.2f}"
        outcome = agg.outcome if agg.failed else ("ok" if row.survives else "over budget")
        memory = None if agg.engine_memory_bytes is None else agg.engine_memory_bytes / 2**30
        costs = (_number(agg.engine_ms_per_token, 2), _number(memory, 2)) if engine else ()
        table.add_row(
            str(row.rank), agg.strategy_name, outcome, _number(agg.perplexity, 2), ci, _number(agg.kl, 4),
            _number(agg.top1, 3), _number(agg.cloze_accuracy, 3), _number(agg.qa_exact_match, 3),
            _number(agg.bits_per_weight, 3), *costs, "-" if row.score == float("-inf") else f"{row.score:.3f}",
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


def pareto_front(rows) -> list:
    """Returns the rows on the KL-bits Pareto front (survivors of rank 0), cheapest first."""
    front = [row for row in rows if row.pareto_rank == 0]
    return sorted(front, key=lambda row: (row.aggregate.bits_per_weight, row.aggregate.kl))


def _front_text(rows) -> str:
    points = [f"{row.aggregate.bits_per_weight:.2f} b/w KL {row.aggregate.kl:.4f}" for row in pareto_front(rows)]
    return " | ".join(points) or "-"


def _duration(seconds: float) -> str:
    minutes, seconds = divmod(int(seconds), 60)
    return f"{minutes // 60}:{minutes % 60:02d}:{seconds:02d}"


def print_evolve_outcome(outcome, directory: Path) -> None:
    """Prints the end of an evolve run: why it stopped, the leaderboard and the Pareto front."""
    print_leaderboard(list(outcome.rows)[:20], title=f"leaderboard after {len(outcome.generations)} generations ({outcome.matches} matches)")
    console.print(f"Pareto front (bits, KL): {_front_text(outcome.rows)}", highlight=False)
    console.print(f"stopped: {outcome.stop_reason}", highlight=False)
    console.print(f"run directory: {directory}", highlight=False)


def print_run(view) -> None:
    """Prints a run read back (`agentqat show`): manifest facts, generations, each stage's leaderboard, front."""
    manifest = view.manifest
    settings = manifest.get("settings", {})
    console.print(
        f"[bold]{manifest.get('kind', 'run')}[/bold] {view.directory} on arena {manifest['arena']['name']}"
        + (f", generator {settings['generator']}, seed {settings['seed']}" if settings else ""),
        highlight=False,
    )
    if view.generations:
        table = Table("gen", "proposed", "last stage", "survived", "failures", "best", "score", "matches", "elapsed", title="generations")
        for g in view.generations:
            failures = ", ".join(f"{k} {v}" for k, v in g["failures"].items()) or "-"
            score = "-" if g["best_score"] is None else f"{g['best_score']:.4f}" + (" *" if g["improved"] else "")
            table.add_row(
                str(g["generation"] + 1), str(g["proposed"]), str(g["promoted"]), str(g["survivors"]), failures,
                g["best_name"] or "-", score, str(g["matches"]), _duration(g["elapsed_s"]),
            )  # fmt: skip
        console.print(table)
    for stage, rows in view.stages.items():
        shown = rows if stage == list(view.stages)[-1] else [row for row in rows if row.aggregate.failed]
        if shown:
            title = f"stage {stage}: " + ("leaderboard" if shown is rows else f"{len(shown)} failed of {len(rows)}")
            print_leaderboard(shown, title=title)
    last = list(view.stages.values())[-1] if view.stages else []
    console.print(f"Pareto front (bits, KL): {_front_text(last)}", highlight=False)
    if view.summary:
        console.print(f"stopped: {view.summary['stop_reason']}", highlight=False)


def print_finished(view, extend_command: str) -> None:
    """Prints a run that ended, read back from its records, and the command that extends it ("" when the
    generator had nothing new to propose)."""
    print_run(view)
    if extend_command:
        console.print(f"this run has finished; to extend it: {extend_command}", highlight=False, soft_wrap=True)
    else:
        console.print("this run has finished and its generator had nothing new to propose; start another run with a new seed", highlight=False)


def print_engine_costs(profile, path: Path) -> None:
    """Prints a target's measured engine costs, one row per scheme, and where they are cached."""
    table = Table("scheme", "measured config", "decode ms/token", "tokens/s", "first token s", "peak memory GiB", "weights MiB",
                  title=f"engine costs on {profile.target} for {profile.model} (vLLM {profile.vllm}, {profile.threads} thread(s))")  # fmt: skip
    for name, cost in profile.schemes.items():
        table.add_row(name, cost.config, f"{cost.decode_ms_per_token:.2f}", f"{1000 / cost.decode_ms_per_token:.1f}",
                      f"{cost.first_token_s:.3f}", f"{cost.peak_memory_bytes / 2**30:.2f}", f"{cost.weight_bytes / 2**20:.1f}")  # fmt: skip
    console.print(table)
    console.print(f"measured {profile.measured_at}; cached at {path}")


def print_engines(found) -> None:
    """Prints the engines found: name, version and path, or how to get a missing one (one line each)."""
    for engine in found:
        if engine.path is None:
            console.print(f"[red]missing[/red] {engine.name}: {engine.missing_hint}", highlight=False)
        else:
            console.print(f"[green]found[/green] {engine.name} {engine.version} at {engine.path}", highlight=False)


def print_engine_eval(report: dict) -> None:
    """Prints llama.cpp's figures of a GGUF file (`agentqat engine-eval`)."""
    kl = report["kl"]
    made = f" (stock {report['stock']}{' + imatrix' if report['imatrix'] else ''})" if "stock" in report else ""
    console.print(f"[bold]{report['file']}[/bold]{made}", highlight=False)
    console.print(
        f"  {report['file_bytes'] / 2**20:.2f} MiB, {report['bits_per_weight']:.3f} bits per weight; on {report['text']} "
        f"({kl['chunks']} chunks of {kl['context']}): mean KL {kl['mean_kl']:.4f}, same top token {100 * kl['same_top']:.1f}%, "
        f"perplexity {kl['perplexity']:.3f} (base {kl['base_perplexity']:.3f})",
        highlight=False,
    )
