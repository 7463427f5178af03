"""What runs share and must close: the evaluator pool and the LLM generator's vLLM servers (one per proposer
model), as context managers that close them on any exit (Ctrl-C included), in reverse order of opening; and the
deploy target's engine costs, measured once before them.

    with Resources(arena, workers=1, llm=LlmSettings(), log_dir=run_dir, reporter=view) as shared:
        run_evolve(run_a, manifest_a, resources=shared)
        run_evolve(run_b, manifest_b, resources=shared)   # one pool, one server for both

The recorded player holds no resource of its own (each result is appended, fsynced and closed), so each run
makes its own over the shared pool.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path

from agentqat import defaults
from agentqat.arena.config import Arena
from agentqat.errors import UserError
from agentqat.progress import Reporter, phase
from agentqat.rundir.manifest import LlmSettings

SERVER_LOG = "llm-server.log"


def default_workers(llms: Sequence[LlmSettings]) -> int:
    """Returns the evaluator actors a run uses unless told: 2, or 1 beside a managed vLLM server (a core each)."""
    return 1 if any(llm.managed_server for llm in llms) else defaults.EVOLVE_WORKERS


@contextmanager
def evaluator_pool(arena: Arena, workers: int, ray_address: str | None = None, reporter: Reporter | None = None) -> Iterator:
    """Yields the arena's evaluator pool (`workers` Ray actors, or in-process for 0), shut down on exit."""
    from agentqat.arena.pool import make_pool

    pool = make_pool(arena, workers, ray_address, reporter=reporter)
    try:
        yield pool
    finally:
        pool.shutdown()


@contextmanager
def vllm_server(llm: LlmSettings, log_path: Path, reporter: Reporter | None = None) -> Iterator:
    """Yields the managed vLLM server the LLM settings ask for (None when they name a URL or another backend),
    stopped on exit. A server given by URL is checked first (it answers, serves the model, constrains JSON)."""
    if not llm.managed_server:
        if llm.backend in ("vllm", "openai"):
            from agentqat.serving.backends import check_server, served_name

            with phase(reporter, f"checking the LLM server at {llm.url}"):
                check_server(llm.url, served_name(llm.model) if llm.backend == "vllm" else llm.model, llm.backend)
        yield None
        return
    from agentqat.serving.server import VllmServer

    server = VllmServer(llm.model, threads=defaults.LLM_THREADS, log_path=log_path, gpu_fraction=llm.gpu_fraction)
    with phase(reporter, f"starting vLLM for {server.model_name}", detail=f"log: {server.log_path}"):
        server.start()
    try:
        yield server
    finally:
        server.stop()


def ensure_engine_costs(arena: Arena, reporter: Reporter | None = None) -> None:
    """Measures the engine costs of the arena's vllm-* deployment target once (agentqat.arena.engine_costs), before any
    worker starts; where this machine cannot run the engine, a UserError when the arena's score weighs latency or
    memory, else a phase saying that they are left out."""
    from agentqat.arena.engine_costs import ENGINE_TARGETS, load_profile, profile_path
    from agentqat.export.measure_costs import measure_profile, why_not_measurable

    if arena.deploy not in ENGINE_TARGETS or load_profile(arena.deploy, arena.model) is not None:
        return
    reason = why_not_measurable(arena.deploy)
    if reason is None:
        measure_profile(arena.deploy, arena, reporter)
    elif arena.score.latency or arena.score.memory:
        raise UserError(f"arena {arena.name} weighs engine latency or memory, but {reason}",
                        f"measure them where the engine runs (agentqat engine-costs --deploy {arena.deploy}) and copy "
                        f"{profile_path(arena.deploy, arena.model)} here, or set [score] latency and memory to 0")  # fmt: skip
    else:
        with phase(reporter, f"engine costs of {arena.deploy} not measured", detail=f"{reason}; latency and memory are not reported"):
            pass


class Resources:
    """The pool and (for the LLM generator) the vLLM servers that one or more runs share, one per proposer model
    (a comparison's `llm@MODEL` arms); a context manager.

    Engine costs are measured first (a vllm-* target, once per machine), with nothing else running; then the server
    starts: a failing outside service ends the command before any model is loaded."""

    def __init__(
        self,
        arena: Arena,
        workers: int | None = None,
        ray_address: str | None = None,
        llm: LlmSettings | Sequence[LlmSettings] | None = None,
        log_dir: Path | None = None,
        reporter: Reporter | None = None,
    ):
        self.arena, self.ray_address, self.reporter = arena, ray_address, reporter
        self.llms = (llm,) if isinstance(llm, LlmSettings) else tuple(llm or ())
        self.workers = default_workers(self.llms) if workers is None else workers
        self.log_dir = log_dir or defaults.cache_dir() / "logs"
        self.pool = None
        self.servers: dict[str, object] = {}  # proposer model -> its managed vLLM server
        self._stack = ExitStack()

    def server_for(self, llm: LlmSettings | None):
        """Returns the managed vLLM server of the LLM settings' model (None when they manage none or none is open)."""
        return self.servers.get(llm.model) if llm is not None and llm.managed_server else None

    def _log_path(self, llm: LlmSettings) -> Path:
        """Returns the server log of a proposer: llm-server.log for the first, llm-server-<model>.log after it."""
        if not self.servers:
            return self.log_dir / SERVER_LOG
        return self.log_dir / SERVER_LOG.replace(".log", f"-{Path(llm.model).name}.log")

    def __enter__(self) -> Resources:
        ensure_engine_costs(self.arena, self.reporter)
        with ExitStack() as stack:
            for llm in self.llms:
                if llm.model not in self.servers or not llm.managed_server:
                    server = stack.enter_context(vllm_server(llm, self._log_path(llm), self.reporter))
                    if server is not None:
                        self.servers[llm.model] = server
            self.pool = stack.enter_context(evaluator_pool(self.arena, self.workers, self.ray_address, self.reporter))
            self._stack = stack.pop_all()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stack.close()
