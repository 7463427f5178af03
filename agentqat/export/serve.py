"""An exported model served by the real vLLM server, measured: size of its weight files, the server's peak resident
memory, time to the first token, decode speed, and perplexity from the server's prompt logprobs.

Used by `agentqat engine-costs` (agentqat.arena.engine_costs), bench/export.py and the export tests. Timing requests are
greedy with EOS ignored, so every model decodes the same number of tokens from the same prompt.
"""

from __future__ import annotations

import json
import math
import os
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from agentqat.serving.server import VllmServer

PROMPT = "Write a short report on the history of the printing press in Europe."
REQUEST_TIMEOUT_S = 900


def post(url: str, body: dict) -> dict:
    """Returns the JSON reply of a POST request."""
    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT_S) as response:
        return json.load(response)


def group_rss(pid: int) -> int:
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
            self.peak = max(self.peak, group_rss(self.pid))
            time.sleep(0.2)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def first_token_and_decode(base_url: str, model: str, tokens: int) -> tuple[float, float]:
    """Returns (seconds to the first streamed token, decode tokens per second after it) for one greedy request."""
    body = {"model": model, "prompt": PROMPT, "max_tokens": tokens, "temperature": 0.0, "ignore_eos": True, "stream": True}
    request = urllib.request.Request(f"{base_url}/completions", json.dumps(body).encode(), {"Content-Type": "application/json"})
    started = time.perf_counter()
    first, count = None, 0
    with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT_S) as response:
        for line in response:
            if line.startswith(b"data: {"):
                count += 1
                first = first or time.perf_counter()
    end = time.perf_counter()
    return first - started, (count - 1) / (end - first)


def window_nll(base_url: str, model: str, window: list[int]) -> float:
    """Returns the mean next-token NLL of a window from the server's prompt logprobs (echo, one extra token)."""
    reply = post(f"{base_url}/completions", {
        "model": model, "prompt": window, "max_tokens": 1, "echo": True, "logprobs": 0, "temperature": 0.0,
    })  # fmt: skip
    logprobs = reply["choices"][0]["logprobs"]["token_logprobs"][: len(window)]
    if logprobs[0] is not None or any(value is None for value in logprobs[1:]):
        raise ValueError("the server's prompt logprobs do not cover the window")
    return -sum(logprobs[1:]) / (len(window) - 1)


def served_perplexity(base_url: str, model: str, windows) -> float:
    """Returns the perplexity of the windows (token id tensors or lists) from the server's prompt logprobs."""
    nll = [window_nll(base_url, model, [int(t) for t in window]) for window in windows]
    return math.exp(sum(nll) / len(nll))


@dataclass(frozen=True)
class Served:
    """One model on the engine: weight files, peak memory, first-token and decode timings (medians), perplexity."""

    weight_bytes: int
    peak_memory_bytes: int
    first_token_s: float
    decode_tokens_per_s: float
    perplexity: float | None

    @property
    def decode_ms_per_token(self) -> float:
        return 1000 / self.decode_tokens_per_s


def measure_served(directory: Path, log_path: Path, tokens: int = 128, repeats: int = 3, windows=None) -> Served:
    """Returns the model directory served alone by vLLM, measured: `repeats` timing requests of `tokens` decoded
    tokens (medians), the server's peak memory over them, and the perplexity of `windows` (None: not measured)."""
    size = sum(path.stat().st_size for path in Path(directory).glob("*.safetensors"))
    with VllmServer(directory, log_path=log_path) as server:
        with PeakMemory(server.pid) as memory:
            runs = [first_token_and_decode(server.base_url, server.model_name, tokens) for _ in range(repeats)]
            perplexity = None if windows is None else served_perplexity(server.base_url, server.model_name, windows)
    median = len(runs) // 2
    return Served(
        weight_bytes=size,
        peak_memory_bytes=memory.peak,
        first_token_s=sorted(run[0] for run in runs)[median],
        decode_tokens_per_s=sorted(run[1] for run in runs)[median],
        perplexity=perplexity,
    )
