"""Prints the LLM serving layer's speed on a proposer model: the vLLM server's start-up seconds, then
strategy-schema-constrained JSON proposals per minute from the vLLM server (one request at a time, then
`--concurrency` at once, as the LLM generator sends them) and from the in-process (Outlines over transformers)
backend, with the same prompt and seeds, and whether a repeated seed repeats.

    .venv/bin/python bench/llm_serving.py [--model smollm2-135m] [--proposals 6] [--threads 1] [--concurrency 8]
        [--backends vllm,transformers]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import jsonschema

from agentqat.serving.backends import JsonBackend, TransformersBackend, VllmBackend
from agentqat.serving.server import VllmServer
from agentqat.strategy.document import strategy_json_schema

PROMPT = (
    "Propose a quantization strategy for SmolLM2-135M (30 layers, hidden 576) as JSON: 4-bit weights by "
    "default with group size 64, and 8-bit weights for the MLP down projections of the last layers."
)
MAX_TOKENS = 512


def measure(backend: JsonBackend, proposals: int) -> None:
    """Prints proposals per minute (the first, which may compile the schema, apart) and their validity."""
    schema = strategy_json_schema()
    seconds, valid, chars = [], 0, []
    for seed in range(proposals):
        started = time.perf_counter()
        reply = backend.generate(PROMPT, schema, seed, MAX_TOKENS)
        seconds.append(time.perf_counter() - started)
        chars.append(len(reply))
        try:
            jsonschema.validate(json.loads(reply), schema)
            valid += 1
        except (json.JSONDecodeError, jsonschema.ValidationError):
            pass
    repeated = backend.generate(PROMPT, schema, 0, MAX_TOKENS) == backend.generate(PROMPT, schema, 0, MAX_TOKENS)
    rest = seconds[1:] or seconds
    print(
        f"{backend.name}: first proposal {seconds[0]:.1f} s, then {statistics.mean(rest):.1f} s each "
        f"({60 / statistics.mean(rest):.1f} per minute); {valid}/{proposals} valid; "
        f"mean reply {statistics.mean(chars):.0f} chars; same seed, same text: {repeated}"
    )


def measure_concurrent(backend: JsonBackend, proposals: int, concurrency: int) -> None:
    """Prints proposals per minute when `concurrency` requests are in flight at once (after one warm-up)."""
    schema = strategy_json_schema()
    backend.generate(PROMPT, schema, 0, MAX_TOKENS)
    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        replies = list(pool.map(lambda seed: backend.generate(PROMPT, schema, seed, MAX_TOKENS), range(proposals)))
    seconds = time.perf_counter() - started
    print(
        f"{backend.name}, {concurrency} requests at once: {proposals} proposals in {seconds:.1f} s "
        f"({60 * proposals / seconds:.1f} per minute); mean reply {statistics.mean(map(len, replies)):.0f} chars"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--proposals", type=int, default=6)
    parser.add_argument("--threads", type=int, default=1, help="threads of the vLLM worker and of the in-process backend")
    parser.add_argument("--concurrency", type=int, default=8, help="requests in flight at once in the second vLLM measurement")
    parser.add_argument("--backends", default="vllm,transformers", help="which backends to measure")
    args = parser.parse_args()
    backends = args.backends.split(",")

    if "vllm" in backends:
        with tempfile.TemporaryDirectory() as logs:
            with VllmServer(args.model, threads=args.threads, log_path=Path(logs) / "server.log") as server:
                print(f"vLLM server start-up: {server.start_seconds:.1f} s")
                backend = VllmBackend.for_server(server)
                measure(backend, args.proposals)
                measure_concurrent(backend, args.proposals * 2, args.concurrency)
    if "transformers" in backends:
        measure(TransformersBackend(args.model, threads=args.threads), args.proposals)


if __name__ == "__main__":
    main()
