"""Everything the terminal shows. The only module that imports rich."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from rich.console import Console
from rich.table import Table

from agentqat.models import ModelFacts

console = Console()


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
