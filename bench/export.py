"""Prints the efficiency of exported strategies served by the real engine (issue 12): for the unquantized model and
each strategy, exported to compressed-tensors and served by vLLM (on CPU here; with CUDA where the machine has it),
the size of its weight files, the server's peak resident memory, the time to the first token and the decode
speed, and the perplexity of a few evaluation windows from the server's prompt logprobs.

    .venv/bin/python bench/export.py [STRATEGY.json ...] [--windows 4] [--tokens 128] [--repeats 3] [--out DIR]

With no strategy it measures the built-in set: uniform W4A16 (int4 g64 symmetric RTN; the rounding does not change
the speed), uniform W8A8 (int8 per channel, per-token activations) and the mixed example of the export test
(layers 0-19 W4A16, 20-29 W8A8).
Every model runs alone on the machine, one after the other, with the same prompt (greedy, EOS ignored).
Where `agentqat engine-costs --deploy vllm-cpu` has measured the engine's schemes, each strategy's row also shows
the decode speed and peak memory that the search predicts from them (agentqat.arena.engine_costs), to check that model.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

from agentqat.arena.config import Arena, Stage
from agentqat.export.serve import measure_served
from agentqat.models import resolve_model_directory

UNIFORM_W4A16 = {"schema_version": 1, "name": "uniform-w4a16-g64", "default": {"weight": {"bits": 4, "group_size": 64, "symmetric": True, "rounding": "rtn"}}}
UNIFORM_W8A8 = {"schema_version": 1, "name": "uniform-w8a8",
                "default": {"weight": {"bits": 8, "group_size": 0, "symmetric": True}, "activation": {"bits": 8, "granularity": "per_token"}}}  # fmt: skip
MIXED = {**UNIFORM_W4A16, "name": "w4a16-0-19-w8a8-20-29", "rules": [
    {"layers": "20-29", "weight": {"bits": 8, "group_size": 0}, "activation": {"bits": 8, "granularity": "per_token"}}]}  # fmt: skip


def measure(name: str, directory: Path, windows, tokens: int, repeats: int, logs: Path, predicted=None) -> dict:
    """Returns one row: size on disk, peak memory, first-token seconds, decode tokens/s, served perplexity, and the
    engine-cost prediction of decode tokens/s and peak memory (None: no profile)."""
    served = measure_served(directory, logs / f"{name}.log", tokens, repeats, windows)
    return {"model": name, "size_mb": served.weight_bytes / 2**20, "peak_rss_gb": served.peak_memory_bytes / 2**30,
            "first_token_s": served.first_token_s, "decode_tok_s": served.decode_tokens_per_s, "perplexity": served.perplexity,
            "predicted_tok_s": None if predicted is None else 1000 / predicted.decode_ms_per_token,
            "predicted_rss_gb": None if predicted is None else predicted.peak_memory_bytes / 2**30}  # fmt: skip


def _cell(value: float | None, width: int, digits: int) -> str:
    return f"{'-':>{width}}" if value is None else f"{value:{width}.{digits}f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("strategies", nargs="*", type=Path)
    parser.add_argument("--windows", type=int, default=4, help="evaluation windows of 256 tokens for the perplexity")
    parser.add_argument("--tokens", type=int, default=128, help="decoded tokens per timing request")
    parser.add_argument("--repeats", type=int, default=3, help="timing requests per model (the median is shown)")
    parser.add_argument("--out", type=Path, default=None, help="keep the exports here (default: a temporary directory)")
    args = parser.parse_args()

    from agentqat.arena.engine_costs import load_profile, strategy_engine_cost
    from agentqat.arena.match import Workbench
    from agentqat.export import export, prepare_source
    from agentqat.strategy.document import parse_strategy
    from agentqat.strategy.resolve import resolve_strategy

    documents = [json.loads(path.read_text()) for path in args.strategies] or [UNIFORM_W4A16, UNIFORM_W8A8, MIXED]
    stage = Stage(name="bench", windows=args.windows)
    arena = Arena(name="export-bench", window_tokens=256, compute_threads=2, stages=(stage,))
    workbench = Workbench(arena)
    windows, facts = workbench.windows(stage, arena.seed, 0), workbench.loaded.facts
    del workbench
    profile = load_profile("vllm-cpu", arena.model)
    work = Path(args.out or tempfile.mkdtemp(prefix="agentqat-export-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    base = work / "base-bf16"
    if not base.exists():
        shutil.copytree(resolve_model_directory(arena.model), base)
    rows = [measure("unquantized (fp32 files, bf16)", base, windows, args.tokens, args.repeats, work)]
    for document in documents:
        out = work / document.get("name", "strategy")
        if not (out / "config.json").exists():
            export(prepare_source(document, arena), "compressed-tensors", out, deploy="vllm-cpu")
        predicted = None if profile is None else strategy_engine_cost(resolve_strategy(parse_strategy(document), facts), facts, profile)
        rows.append(measure(document.get("name", out.name), out, windows, args.tokens, args.repeats, work, predicted))
    print(f"{'model':32} {'weights MB':>10} {'peak RSS GB':>11} {'first token s':>13} {'decode tok/s':>12} {'ppl':>8} "
          f"{'predicted tok/s':>15} {'predicted RSS GB':>16}")  # fmt: skip
    for row in rows:
        print(f"{row['model']:32} {row['size_mb']:10.1f} {row['peak_rss_gb']:11.2f} {row['first_token_s']:13.3f} "
              f"{row['decode_tok_s']:12.1f} {row['perplexity']:8.2f} {_cell(row.get('predicted_tok_s'), 15, 1)} "
              f"{_cell(row.get('predicted_rss_gb'), 16, 2)}")  # fmt: skip


if __name__ == "__main__":
    main()
