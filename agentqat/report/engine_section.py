"""The report's section on llama.cpp's own measurement of a GGUF comparison's winners (DIR/engine.jsonl, written by
bench/gguf_winners.py): the stock file they are held against, whether the engine orders the arms as the search did,
and the table of its figures per arm."""

from __future__ import annotations

import math

import numpy as np
from scipy.stats import spearmanr

from agentqat.report.analysis import ArmSummary, engine_label


def _label(text: str) -> str:
    return engine_label(text).removeprefix("engine ")


def stock_sentence(engine: tuple[dict, ...]) -> str:
    """Returns what llama.cpp's stock files measured on the winners' texts ("" when none was measured)."""
    stock = [record for record in engine if "stock" in record]
    files = sorted({(record["stock"], record.get("imatrix", False), record["file_bytes"]) for record in stock})
    parts = []
    for type_name, imatrix, size in files:
        figures = "; ".join(f"{_label(r['text'])}: KL {r['kl']['mean_kl']:.4g}, perplexity {r['kl']['perplexity']:.4g}"
                            for r in stock if (r["stock"], r.get("imatrix", False), r["file_bytes"]) == (type_name, imatrix, size))  # fmt: skip
        parts.append(f"llama.cpp's stock {type_name}{' + imatrix' if imatrix else ''} file, {size:,} bytes, made by llama-quantize alone ({figures})")
    return ("Held against " + "; and ".join(parts) + ".") if parts else ""


def order_sentence(summaries: list[ArmSummary]) -> str:
    """Returns whether llama.cpp's test-split KL orders the arms as the search's final KL does (arm means), and the
    rank correlation of the two over runs ("" without engine test figures)."""
    engine = f"{engine_label('test')} KL"
    means = {}
    for quantity in ("final KL", engine):
        means[quantity] = {s.arm: float(np.mean(s.values[quantity])) for s in summaries
                           if s.values.get(quantity) and all(math.isfinite(v) for v in s.values[quantity])}  # fmt: skip
    arms = [arm for arm in means["final KL"] if arm in means[engine]]
    if len(arms) < 2:
        return ""
    search = sorted(arms, key=lambda arm: means["final KL"][arm])
    measured = sorted(arms, key=lambda arm: means[engine][arm])
    pairs = [(final, by_engine) for s in summaries
             for final, run_f in zip(s.values["final KL"], s.runs["final KL"])
             for by_engine, run_e in zip(s.values.get(engine, []), s.runs.get(engine, [])) if run_f == run_e]  # fmt: skip
    rho = spearmanr(*zip(*pairs)).statistic if len(pairs) > 2 else math.nan
    same = "the same order" if search == measured else "a different order"
    return (f"Arms by mean final KL on the search split: {' < '.join(search)}; by mean llama.cpp KL on the test split: "
            f"{' < '.join(measured)} ({same}). Spearman's rank correlation of the two over the {len(pairs)} runs: {rho:.2f}.")


def engine_quantities(present: list[str]) -> list[str]:
    """Returns the quantities among `present` that llama.cpp measured."""
    return [quantity for quantity in present if quantity.startswith("engine ")]


def engine_intro(texts: list[str], chunks: int | None) -> str:
    """Returns the paragraph that says what the engine columns are."""
    where = ", ".join(f"'{_label(text)}' = " + ("the corpus's test split" if text == "test" else f"the text file {text}") for text in texts)
    size = f"{chunks} chunks of 512 tokens" if chunks else "its chunks"
    return ("Measured by llama.cpp itself (DIR/engine.jsonl, bench/gguf_winners.py): each run's rank-1 winner written as "
            "the GGUF file the arena scored (as `agentqat export --format gguf` writes it: llama-quantize's levels with the arena's "
        "importance matrix, agentqat's own blocks in place), then llama-perplexity "
            f"--kl-divergence against the f32 model on {size} of each text ({where}).")


def engine_chunks(engine: tuple[dict, ...]) -> int | None:
    """Returns the chunks each measurement read (None when the records disagree or hold none)."""
    chunks = {record["kl"].get("chunks") for record in engine}
    return chunks.pop() if len(chunks) == 1 else None
