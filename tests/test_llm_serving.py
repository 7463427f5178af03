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
from agentqat.serving.backends import CANARY_REPLY, TransformersBackend, VllmBackend, check_constrained, check_server, make_backend
from agentqat.serving.server import VllmServer, bound_cpus, free_port

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


class UnconstrainedTransformers:
    """A real transformers `generate` on the chat prompt that never sees the schema: what a server does that
    ignores the schema field (vLLM >= 0.12 sent `guided_json` by an old Outlines)."""

    def __init__(self, directory):
        from agentqat.models import load_model

        loaded = load_model(str(directory))
        self.model, self.tokenizer = loaded.model, loaded.tokenizer
        self.name = f"unconstrained transformers {directory}"
        self.concurrency = 1

    def generate(self, prompt, schema, seed, max_tokens):
        import transformers

        transformers.set_seed(seed)
        messages = [{"role": "user", "content": prompt}]
        ids = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)["input_ids"]
        output = self.model.generate(ids, max_new_tokens=max_tokens, do_sample=True, pad_token_id=self.tokenizer.eos_token_id)
        return self.tokenizer.decode(output[0, ids.shape[1] :], skip_special_tokens=True)


def test_the_constraint_check_passes_a_constraining_backend_and_refuses_one_that_is_not(tiny_backend, tiny_llama_dir):
    check_constrained(tiny_backend)  # Outlines over transformers: the canary comes back whatever the model
    free = UnconstrainedTransformers(tiny_llama_dir)
    with pytest.raises(UserError, match="does not constrain its decoding") as caught:
        check_constrained(free)
    assert free.name in str(caught.value) and "outlines >= 1.3.3" in str(caught.value)
    assert "\n" not in str(caught.value)


def test_a_server_where_nothing_listens_is_one_line_at_once():
    url = f"http://127.0.0.1:{free_port()}/v1"
    started = time.perf_counter()
    with pytest.raises(UserError, match=f"no LLM server answers at {url}") as caught:
        check_server(url)
    assert "\n" not in str(caught.value) and time.perf_counter() - started < 5
    with pytest.raises(UserError, match="not an http"):
        check_server("127.0.0.1:8000/v1")


def test_evolve_checks_a_given_server_before_any_match(tmp_path, sensitive_llama_dir, small_corpus_file, capsys):
    """`--llm-url` where nothing listens: exit 2 with one line, and not one sensitivity probe played."""
    from agentqat.cli import main

    arena = tmp_path / "tiny.toml"
    arena.write_text(f'model = "{sensitive_llama_dir}"\ncorpus = "{small_corpus_file}"\nwindow_tokens = 64\n'
                     'calibration_windows = 4\nbits_budget = 5.0\n[[stages]]\nname = "screen"\nwindows = 2\n')  # fmt: skip
    url = f"http://127.0.0.1:{free_port()}/v1"
    args = ["evolve", "--arena", str(arena), "--generator", "llm", "--llm-url", url, "--workers", "0",
            "--runs", str(tmp_path), "--run", "dead"]  # fmt: skip
    assert main(args) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("agentqat evolve: error")]
    assert len(errors) == 1 and f"no LLM server answers at {url}" in errors[0]
    assert not (tmp_path / "dead" / "results.jsonl").exists() or not (tmp_path / "dead" / "results.jsonl").read_text()


def test_fallback_proposals_are_recorded_under_the_generator_that_made_them(tmp_path, sensitive_llama_dir, smollm2_shaped_facts):
    """The LLM fails (nothing listens), the random generator takes over: the journal names it per proposal."""
    import numpy as np

    from agentqat.generators import make_generator
    from agentqat.generators.fallback import WithFallback
    from agentqat.rundir.journal import EvolveJournal
    from agentqat.rundir.store import RunStore
    from agentqat.strategy.space import SearchSpace

    space = SearchSpace(smollm2_shaped_facts, 4.5)
    dead = VllmBackend(f"http://127.0.0.1:{free_port()}/v1", "smollm2-135m", timeout_s=2, retries=0)
    generator = WithFallback(make_generator("llm", space, backend=dead), make_generator("random", space))
    assert generator.name == "llm"
    journal = EvolveJournal(RunStore.create(tmp_path / "run", {"kind": "evolve"}))
    for index, document in enumerate(generator.iter_proposals([], 3, np.random.default_rng(0))):
        journal.record_proposal(0, index, generator.name, document)  # as evolve does, while the generator waits
    journal.record_generator(0, generator.take_records())
    store = RunStore.open(tmp_path / "run")
    assert [p["generator"] for p in store.read("strategies")] == ["random"] * 3
    assert [(f["from"], f["to"]) for f in store.read("fallbacks")] == [("llm", "random")]


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
    from agentqat.cli import build_parser
    from agentqat.cli.commands import cmd_llm_serve

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
        "    command = [sys.executable, '-m', 'agentqat.serving.die_with_parent', str(os.getpid()), *command]\n"
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
    assert VllmServer(port=8000).command("dir")[:4] == [sys.executable, "-m", "agentqat.serving.die_with_parent", str(os.getpid())]
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
def test_many_long_seeded_prompts_at_once_keep_the_server_up(smollm2_server):
    """The LLM generator sends its requests together; long prompts arriving at once used to get their prefills split,
    which crashes vLLM 0.32's CPU worker for seeded requests (the server died and was restarted)."""
    from concurrent.futures import ThreadPoolExecutor

    backend = VllmBackend.for_server(smollm2_server)
    schema = {"type": "object", "properties": {"bits": {"enum": [2, 3, 4, 8]}}, "required": ["bits"], "additionalProperties": False}
    prompts = [("Layer sensitivities and lessons from earlier generations. " * 120) + f"Request {k}: pick bits." for k in range(8)]
    with ThreadPoolExecutor(8) as pool:
        together = list(pool.map(lambda k: backend.generate(prompts[k], schema, k, 16), range(8)))
    assert smollm2_server.restarts == 0 and smollm2_server.running()
    assert all(json.loads(reply)["bits"] in (2, 3, 4, 8) for reply in together)


@pytest.mark.slow
def test_the_constraint_check_passes_the_real_vllm_server(smollm2_server):
    """The server decodes under its structured outputs: the canary comes back; a model it does not serve is one line."""
    check_constrained(VllmBackend.for_server(smollm2_server))
    assert json.loads(VllmBackend.for_server(smollm2_server).generate("Say hello.", {"enum": ["zebra"]}, 0, 8)) == "zebra"
    check_server(smollm2_server.base_url, "smollm2-135m")
    with pytest.raises(UserError, match=r"serves \['smollm2-135m'\], not 'gemma3-270m'"):
        check_server(smollm2_server.base_url, "gemma3-270m")
    assert CANARY_REPLY == {"agentqat_canary": "zebra-quartz-17"}


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
        "from agentqat.serving.server import VllmServer\n"
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


def test_a_managed_server_shares_the_gpu_by_its_memory_fraction(monkeypatch):
    """On a GPU the proposer takes a share of its memory (vLLM's --gpu-memory-utilization) beside the workers; the
    share reaches the server from the run's LLM settings; without CUDA, asking for it is one clear error."""
    import agentqat.serving.server as server_module
    from agentqat.rundir.manifest import LlmSettings

    command = VllmServer(port=8000, gpu_fraction=0.3).command("dir")
    assert command[command.index("--gpu-memory-utilization") + 1] == "0.3"
    assert "--gpu-memory-utilization" not in VllmServer(port=8000).command("dir")  # the CPU server: no flag
    with pytest.raises(UserError, match="not in"):
        VllmServer(port=8000, gpu_fraction=1.5)
    monkeypatch.setattr(server_module, "_has_cuda", lambda: False)
    with pytest.raises(UserError, match="no CUDA device"):
        VllmServer(port=8000, gpu_fraction=0.3).start()
    assert LlmSettings(gpu_fraction=0.3).gpu_fraction == 0.3 and LlmSettings().gpu_fraction is None
