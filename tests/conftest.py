"""Session fixtures: tiny real models built in the session, and a cache directory that is never the user's.

Fixtures:
- `agentqat_cache_dir` (session, autouse): a session tmp dir that $AGENTQAT_CACHE_DIR points at for the whole
  run (restored afterwards); $AGENTQAT_ENGINES_DIR keeps pointing at the user's built engines. Tests that need an
  empty cache set their own with `monkeypatch.setenv`.
- `llama_cpp` (session): the pinned llama.cpp's tools, built on first use (once per machine, ~8 min).
- `tiny_llama_dir` (session): a Hugging Face directory with the default tiny Llama (see `tiny_models`).
- `tiny_gguf_path` (session): the same model as an F32 llama GGUF file.
- `small_corpus_file` (session): a text file of 100 lee-news articles (40 evaluation, 40 calibration, 20 held
  out) for arenas on the tiny models.
- `make_tiny_llama(**kwargs) -> Path`, `make_tiny_gguf(**kwargs) -> Path` (session): other variants, e.g.
  `make_tiny_llama(hidden=96)` (group 64 does not divide 96) or `make_tiny_gguf(tensor_type="Q8_0")`; built
  once per distinct arguments and shared by the session, so do not modify what they return.
"""

from __future__ import annotations

import os

# Nothing in the tests may reach a model hub (the machines have no internet; an attempt retries for ~25 s).
# huggingface_hub reads this once at import, so it is set before anything imports it.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
from tiny_models import write_tiny_gguf, write_tiny_llama  # noqa: E402

from agentqat.defaults import CACHE_ENV  # noqa: E402
from agentqat.engines.llama_cpp import ENGINES_ENV, engines_root  # noqa: E402

torch.set_num_threads(2)


@pytest.fixture(scope="session", autouse=True)
def agentqat_cache_dir(tmp_path_factory):
    """Points $AGENTQAT_CACHE_DIR at a session tmp dir, so no test reads or writes the user's cache; built engines
    (the pinned llama.cpp, about 8 minutes to build) stay where the user's are, shared by every test run."""
    engines = os.environ.get(ENGINES_ENV) or str(engines_root())
    directory = tmp_path_factory.mktemp("agentqat-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(CACHE_ENV, str(directory))
        patch.setenv(ENGINES_ENV, engines)
        yield directory


@pytest.fixture(scope="session")
def llama_cpp():
    """The pinned llama.cpp's tools, built on first use (the phase takes about 8 minutes on 2 cores, once)."""
    from agentqat.engines.llama_cpp import build_llama_cpp

    return build_llama_cpp()


def _key(kwargs: dict) -> str:
    return "-".join(f"{name}={kwargs[name]}" for name in sorted(kwargs)) or "default"


@pytest.fixture(scope="session")
def make_tiny_llama(tmp_path_factory):
    """Returns `make(**kwargs) -> Path`: `write_tiny_llama` into a session tmp dir, once per distinct kwargs."""
    built = {}

    def make(**kwargs):
        key = _key(kwargs)
        if key not in built:
            built[key] = write_tiny_llama(tmp_path_factory.mktemp("tiny-llama") / "model", **kwargs)
        return built[key]

    return make


@pytest.fixture(scope="session")
def make_tiny_gguf(tmp_path_factory):
    """Returns `make(**kwargs) -> Path`: `write_tiny_gguf` into a session tmp dir, once per distinct kwargs."""
    built = {}

    def make(**kwargs):
        key = _key(kwargs)
        if key not in built:
            built[key] = write_tiny_gguf(tmp_path_factory.mktemp("tiny-gguf") / "tiny-llama.gguf", **kwargs)
        return built[key]

    return make


@pytest.fixture(scope="session")
def tiny_llama_dir(make_tiny_llama):
    """A Hugging Face directory: 2-layer Llama, hidden 64, MLP 128, 4 heads / 2 KV heads, 512-token BPE."""
    return make_tiny_llama()


@pytest.fixture(scope="session")
def tiny_gguf_path(make_tiny_gguf):
    """An F32 llama GGUF file of the same model as `tiny_llama_dir` (same weights, same tokenizer)."""
    return make_tiny_gguf()


@pytest.fixture(scope="session")
def sensitive_llama_dir(make_tiny_llama):
    """The tiny Llama with linear weights N(0, 0.25^2): quantizing them moves its KL and top-1 measurably."""
    return make_tiny_llama(weight_std=0.25)


@pytest.fixture(scope="session")
def small_corpus_file(tmp_path_factory):
    """A text file of 100 lee-news articles: enough windows for arenas on the tiny models."""
    from agentqat.data import load_corpus

    path = tmp_path_factory.mktemp("corpus") / "news.txt"
    text = load_corpus("lee-news")
    path.write_text("\n".join(text.evaluation.splitlines()[:40] + text.calibration.splitlines()[:40] + text.heldout.splitlines()[:20]))
    return path


@pytest.fixture(scope="session")
def smollm2_shaped_facts():
    """Facts of a model shaped like SmolLM2-135M: 30 layers, hidden 576, MLP 1536, 9 heads / 3 KV heads (meta
    device, no weights), named "smollm2-135m"."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from agentqat.models import model_facts

    config = LlamaConfig(
        hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
        num_key_value_heads=3, vocab_size=49152, tie_word_embeddings=True,
    )  # fmt: skip
    with torch.device("meta"):
        return model_facts(LlamaForCausalLM(config), "smollm2-135m")


@pytest.fixture(scope="session")
def smollm2_server(tmp_path_factory):
    """One vLLM server on the built-in SmolLM2 (about a minute to start on 2 cores), shared by the session's
    slow tests. $AGENTQAT_TEST_MODEL_CACHE, when set, is a cache that already holds the converted model."""
    pytest.importorskip("vllm")
    from agentqat.serving.server import VllmServer

    with pytest.MonkeyPatch.context() as patch:
        if os.environ.get("AGENTQAT_TEST_MODEL_CACHE"):
            patch.setenv(CACHE_ENV, os.environ["AGENTQAT_TEST_MODEL_CACHE"])
        with VllmServer("smollm2-135m", log_path=tmp_path_factory.mktemp("vllm") / "server.log") as server:
            yield server


def _processes_of(marker: str) -> list[int]:
    """Returns the PIDs whose command line holds `marker` (the head's private temp dir)."""
    import os
    from pathlib import Path

    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and entry.name != str(os.getpid()):
            try:
                if marker in (entry / "cmdline").read_bytes().decode(errors="replace"):
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


@pytest.fixture
def loopback_head():
    """A Ray head started with `ray start` on 127.0.0.1 in its own temp dir, as a separate process tree; its
    processes (found by that temp dir) are stopped afterwards. Yields its address."""
    import os
    import signal
    import socket
    import subprocess
    import sys
    import tempfile
    import time
    from pathlib import Path

    temp_dir = tempfile.mkdtemp(prefix="aqhead-", dir="/tmp")  # short: Ray's socket paths have a length limit
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    ray_cli = Path(sys.executable).with_name("ray")
    command = [str(ray_cli), "start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(port),
               "--temp-dir", temp_dir, "--num-cpus", "2", "--include-dashboard=false", "--disable-usage-stats"]  # fmt: skip
    try:
        subprocess.run(command, check=True, capture_output=True, timeout=120, env=os.environ.copy())
        yield f"127.0.0.1:{port}"
    finally:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in _processes_of(temp_dir):
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + 10
            while _processes_of(temp_dir) and time.monotonic() < deadline:
                time.sleep(0.2)
        assert not _processes_of(temp_dir)
        import shutil

        shutil.rmtree(temp_dir, ignore_errors=True)
