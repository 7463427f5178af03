"""The LLM serving layer: schema-constrained JSON from the in-process backend and from a real vLLM server,
reproducible by seed; bounded retries; the managed server's start, restart-once and clean stop. No mocks."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jsonschema
import pytest

from agentqat.errors import UserError
from agentqat.llm.backends import TransformersBackend, VllmBackend, make_backend
from agentqat.llm.server import VllmServer, bound_cpus, free_port

STRATEGY_SCHEMA = json.loads((Path(__file__).resolve().parent.parent / "schemas" / "strategy.schema.json").read_text())
SMALL_SCHEMA = {
    "type": "object",
    "properties": {"bits": {"enum": [2, 3, 4, 8]}, "symmetric": {"type": "boolean"}},
    "required": ["bits", "symmetric"],
    "additionalProperties": False,
}
PROMPT = "Propose a weight quantization strategy for a small Llama model as JSON."


def parsed(text: str) -> dict | None:
    """Returns the JSON object in `text`, None when it is not complete JSON (a reply cut at max_tokens)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return None


@pytest.fixture(scope="module")
def tiny_backend(tiny_llama_dir):
    return TransformersBackend(tiny_llama_dir)


def test_in_process_backend_follows_a_small_schema_and_is_reproducible(tiny_backend):
    first = tiny_backend.generate(PROMPT, SMALL_SCHEMA, seed=0, max_tokens=48)
    jsonschema.validate(json.loads(first), SMALL_SCHEMA)
    assert tiny_backend.generate(PROMPT, SMALL_SCHEMA, seed=0, max_tokens=48) == first
    assert tiny_backend.name.startswith("transformers ")


def test_in_process_backend_follows_the_strategy_schema(tiny_backend):
    # A random model may ramble inside a free-text string until max_tokens; every complete reply must validate.
    replies = [tiny_backend.generate(PROMPT, STRATEGY_SCHEMA, seed=seed, max_tokens=128) for seed in range(4)]
    complete = [document for document in map(parsed, replies) if document is not None]
    assert len(complete) >= 2, replies
    for document in complete:
        jsonschema.validate(document, STRATEGY_SCHEMA)
    assert tiny_backend.generate(PROMPT, STRATEGY_SCHEMA, seed=3, max_tokens=128) == replies[3]


def test_vllm_backend_gives_up_after_bounded_retries_naming_the_url():
    url = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    backend = VllmBackend(url, "smollm2-135m", timeout_s=2, retries=2, backoff_s=0.01)
    started = time.perf_counter()
    with pytest.raises(UserError, match="after 3 attempts") as caught:
        backend.generate(PROMPT, SMALL_SCHEMA, seed=0, max_tokens=16)
    assert url in str(caught.value) and "agentqat llm serve" in str(caught.value)
    assert time.perf_counter() - started < 10


def test_make_backend_and_its_errors():
    assert make_backend("vllm", "smollm2-135m", url="http://127.0.0.1:8000/v1").name == "vllm http://127.0.0.1:8000/v1 smollm2-135m"
    with pytest.raises(UserError, match="needs a server URL"):
        make_backend("vllm")
    with pytest.raises(UserError, match="unknown LLM backend 'llama'"):
        make_backend("llama")


def test_llm_serve_command_line_and_thread_binding():
    from agentqat.cli import build_parser, cmd_llm_serve

    args = build_parser().parse_args(["llm", "serve"])
    assert (args.handler, args.model, args.port, args.threads, args.log) == (cmd_llm_serve, "smollm2-135m", 8000, 1, None)
    cpus = sorted(os.sched_getaffinity(0))
    assert bound_cpus(1) == str(cpus[-1]) and bound_cpus(len(cpus) + 4) == ",".join(map(str, cpus))


def start_owner_then_kill_it(command: list[str], wrapped: bool) -> int:
    """Runs a Python owner process that starts `command` in its own session (`wrapped`: under die_with_parent,
    as VllmServer does) and kills the owner with SIGKILL; returns the pid of the process the owner started."""
    owner_code = (
        "import os, subprocess, sys, time\n"
        f"command = {command!r}\n"
        f"if {wrapped!r}:\n"
        "    command = [sys.executable, '-m', 'agentqat.llm.die_with_parent', str(os.getpid()), *command]\n"
        "child = subprocess.Popen(command, start_new_session=True)\n"
        "print(child.pid, flush=True)\n"
        "time.sleep(600)\n"
    )
    owner = subprocess.Popen([sys.executable, "-c", owner_code], stdout=subprocess.PIPE, text=True)
    child = int(owner.stdout.readline())
    time.sleep(0.5)  # lets the wrapper set the signal and exec
    assert group_alive(child), "the started command should be running before its owner is killed"
    owner.kill()
    owner.wait()
    return child


def wait_gone(pid: int, timeout_s: float) -> bool:
    """Returns whether the process group `pid` has no process left within `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while group_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    return not group_alive(pid)


def test_a_managed_server_ends_when_its_owner_is_killed():
    """A server runs in its own session, which SIGKILL of its owner would orphan; the wrapper ends it."""
    assert VllmServer(port=8000).command("dir")[:4] == [sys.executable, "-m", "agentqat.llm.die_with_parent", str(os.getpid())]
    wrapped = start_owner_then_kill_it(["sleep", "300"], wrapped=True)
    assert wait_gone(wrapped, timeout_s=10)
    unwrapped = start_owner_then_kill_it(["sleep", "300"], wrapped=False)
    try:
        assert not wait_gone(unwrapped, timeout_s=1)
    finally:
        os.killpg(unwrapped, signal.SIGKILL)


# ------------------------------------------------------------------------------------ real vLLM servers
def group_members(pid: int) -> list[str]:
    """Returns the ids of the processes in the process group `pid`."""
    return subprocess.run(["pgrep", "-g", str(pid)], capture_output=True, text=True).stdout.split()


def group_alive(pid: int) -> bool:
    """Returns whether any process of the process group `pid` exists."""
    try:
        os.killpg(pid, 0)
        return True
    except ProcessLookupError:
        return False


@pytest.fixture(scope="module")
def vllm_tiny_dir(make_tiny_llama):
    """The tiny Llama with 2 heads of 32 (vLLM's CPU attention has no kernel for heads of 16)."""
    pytest.importorskip("vllm")
    return make_tiny_llama(heads=2, kv_heads=1)


@pytest.mark.slow
def test_vllm_server_answers_strategy_schema_json_reproducibly(smollm2_server):
    backend = VllmBackend.for_server(smollm2_server)
    assert backend.name == f"vllm {smollm2_server.base_url} smollm2-135m"
    replies = [backend.generate(PROMPT, STRATEGY_SCHEMA, seed=seed, max_tokens=512) for seed in (0, 1)]
    for reply in replies:
        jsonschema.validate(json.loads(reply), STRATEGY_SCHEMA)
    assert backend.generate(PROMPT, STRATEGY_SCHEMA, seed=0, max_tokens=512) == replies[0]


@pytest.mark.slow
def test_vllm_server_that_cannot_start_says_why(vllm_tiny_dir, tmp_path):
    log = tmp_path / "server.log"
    server = VllmServer(vllm_tiny_dir, log_path=log, max_model_len=4096)  # the model has 512 positions
    with pytest.raises(UserError, match="exited with code") as caught:
        server.start()
    assert str(log) in str(caught.value) and "max_model_len" in str(caught.value)
    assert not group_alive(server.pid)


@pytest.mark.slow
def test_a_real_managed_server_ends_with_its_killed_owner(smollm2_server, tmp_path):
    """SIGKILL of a process that started a vLLM server takes the server's engine and worker down too. (The
    fixture's environment points the owner at the cache that already holds the converted model.)"""
    owner_code = (
        "import time\n"
        "from agentqat.llm.server import VllmServer\n"
        f"server = VllmServer('smollm2-135m', log_path={str(tmp_path / 'owned.log')!r}).start()\n"
        "print(server.pid, flush=True)\n"
        "time.sleep(600)\n"
    )
    owner = subprocess.Popen([sys.executable, "-c", owner_code], stdout=subprocess.PIPE, text=True)
    try:
        line = owner.stdout.readline()
        assert line, f"the owner could not start a server (log: {tmp_path / 'owned.log'})"
        served = int(line)
        assert len(group_members(served)) >= 3  # the API server, its engine core and the worker
    finally:
        owner.kill()
        owner.wait()
    try:
        assert wait_gone(served, timeout_s=60)
    finally:
        if group_alive(served):
            os.killpg(served, signal.SIGKILL)


@pytest.mark.slow
def test_vllm_server_is_restarted_once_and_stops_cleanly(smollm2_server):
    """Last in the module: it kills, restarts and stops the shared server."""
    server, backend = smollm2_server, VllmBackend.for_server(smollm2_server, retries=1, backoff_s=0.5)
    first = server.pid
    os.kill(first, signal.SIGKILL)  # a request may still reach it before it dies; the retry then restarts it
    jsonschema.validate(json.loads(backend.generate(PROMPT, STRATEGY_SCHEMA, seed=0, max_tokens=512)), STRATEGY_SCHEMA)
    assert server.restarts == 1 and server.pid != first and not group_alive(first)

    second = server.pid
    assert len(group_members(second)) >= 3  # the API server, its engine core and the worker
    server.stop()
    assert not server.running() and not group_alive(second)
    with pytest.raises(UserError, match="died again"):  # its one restart is spent
        server.ensure_running()
