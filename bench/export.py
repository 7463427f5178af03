"""Prints the efficiency of exported strategies served by the real engine (issue 12): for the unquantized model and
each strategy, exported to compressed-tensors and served by vLLM (on CPU here; with CUDA where the machine has it),
the size of its weight files, the server's peak resident memory, the time to the first token and the decode
speed, and the perplexity of a few evaluation windows from the server's prompt logprobs.

    .venv/bin/python bench/export.py [STRATEGY.json ...] [--windows 4] [--tokens 128] [--repeats 3] [--out DIR]

With no strategy it measures the built-in set: uniform W4A16 (int4 g64 symmetric RTN; the rounding does not change
the speed), uniform W8A8 (int8 per channel, per-token activations) and the mixed example of the export test
(layers 0-19 W4A16, 20-29 W8A8).
Every model runs alone on the machine, one after the other, with the same prompt (greedy, EOS ignored).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

from agentqat.arena.config import Arena, Stage
from agentqat.models import resolve_model_directory

PROMPT = "Write a short report on the history of the printing press in Europe."
UNIFORM_W4A16 = {"schema_version": 1, "name": "uniform-w4a16-g64", "default": {"weight": {"bits": 4, "group_size": 64, "symmetric": True, "rounding": "rtn"}}}
UNIFORM_W8A8 = {"schema_version": 1, "name": "uniform-w8a8",
                "default": {"weight": {"bits": 8, "group_size": 0, "symmetric": True}, "activation": {"bits": 8, "granularity": "per_token"}}}  # fmt: skip
MIXED = {**UNIFORM_W4A16, "name": "w4a16-0-19-w8a8-20-29", "rules": [
    {"layers": "20-29", "weight": {"bits": 8, "group_size": 0}, "activation": {"bits": 8, "granularity": "per_token"}}]}  # fmt: skip


def _post(url: str, body: dict, stream: bool = False):
    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    return urllib.request.urlopen(request, timeout=900) if stream else json.load(urllib.request.urlopen(request, timeout=900))


def _group_rss(pid: int) -> int:
    """Returns the resident bytes of every process in the process group `pid` (the server, engine and workers)."""
    total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if os.getpgid(int(entry.name)) != pid:
                continue
            fields = (entry / "statm").read_text().split()
            total += int(fields[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ProcessLookupError, IndexError):
            continue
    return total


class PeakMemory:
    """Samples a process group's resident memory every 0.2 s while open; `peak` holds the largest sample."""

    def __init__(self, pid: int):
        self.pid, self.peak, self._stop = pid, 0, threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _group_rss(self.pid))
            time.sleep(0.2)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def first_token_and_decode(base_url: str, model: str, tokens: int) -> tuple[float, float]:
    """Returns (seconds to the first streamed token, decode tokens per second after it) for one greedy request."""
    started = time.perf_counter()
    first, count = None, 0
    with _post(f"{base_url}/completions", {"model": model, "prompt": PROMPT, "max_tokens": tokens, "temperature": 0.0,
                                           "ignore_eos": True, "stream": True}, stream=True) as response:  # fmt: skip
        for line in response:
            if line.startswith(b"data: {"):
                count += 1
                first = first or time.perf_counter()
    end = time.perf_counter()
    return first - started, (count - 1) / (end - first)


def served_perplexity(base_url: str, model: str, windows) -> float:
    """Returns the perplexity of the windows from the server's prompt logprobs."""
    nll = []
    for window in windows:
        reply = _post(f"{base_url}/completions", {"model": model, "prompt": window.tolist(), "max_tokens": 1, "echo": True,
                                                  "logprobs": 0, "temperature": 0.0})  # fmt: skip
        logprobs = reply["choices"][0]["logprobs"]["token_logprobs"][1 : len(window)]
        nll.append(-sum(logprobs) / len(logprobs))
    return math.exp(sum(nll) / len(nll))


def measure(name: str, directory: Path, windows, tokens: int, repeats: int, logs: Path) -> dict:
    """Returns one row: size on disk, peak memory, first-token seconds, decode tokens/s, served perplexity."""
    from agentqat.llm.server import VllmServer

    size = sum(path.stat().st_size for path in directory.glob("*.safetensors"))
    with VllmServer(directory, log_path=logs / f"{name}.log") as server:
        with PeakMemory(server.pid) as memory:
            runs = [first_token_and_decode(server.base_url, server.model_name, tokens) for _ in range(repeats)]
            perplexity = served_perplexity(server.base_url, server.model_name, windows)
    first = sorted(run[0] for run in runs)[len(runs) // 2]
    decode = sorted(run[1] for run in runs)[len(runs) // 2]
    return {"model": name, "size_mb": size / 2**20, "peak_rss_gb": memory.peak / 2**30, "first_token_s": first,
            "decode_tok_s": decode, "perplexity": perplexity}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("strategies", nargs="*", type=Path)
    parser.add_argument("--windows", type=int, default=4, help="evaluation windows of 256 tokens for the perplexity")
    parser.add_argument("--tokens", type=int, default=128, help="decoded tokens per timing request")
    parser.add_argument("--repeats", type=int, default=3, help="timing requests per model (the median is shown)")
    parser.add_argument("--out", type=Path, default=None, help="keep the exports here (default: a temporary directory)")
    args = parser.parse_args()

    from agentqat.arena.match import Workbench
    from agentqat.export import export, prepare_source

    documents = [json.loads(path.read_text()) for path in args.strategies] or [UNIFORM_W4A16, UNIFORM_W8A8, MIXED]
    stage = Stage(name="bench", windows=args.windows)
    arena = Arena(name="export-bench", window_tokens=256, compute_threads=2, stages=(stage,))
    windows = Workbench(arena).windows(stage, arena.seed, 0)
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
        rows.append(measure(document.get("name", out.name), out, windows, args.tokens, args.repeats, work))
    print(f"{'model':32} {'weights MB':>10} {'peak RSS GB':>11} {'first token s':>13} {'decode tok/s':>12} {'ppl':>8}")
    for row in rows:
        print(f"{row['model']:32} {row['size_mb']:10.1f} {row['peak_rss_gb']:11.2f} {row['first_token_s']:13.3f} "
              f"{row['decode_tok_s']:12.1f} {row['perplexity']:8.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
