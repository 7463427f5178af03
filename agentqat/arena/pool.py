"""Ray evaluator actors: each loads the arena's Workbench once and plays matches on request.

A dead actor is restarted by Ray (max_restarts) and its match retried once; a match that dies twice, or
runs past the arena's hard limit (the actor is then killed and restarted), is recorded as a failed result.
"""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import asdict

from agentqat.arena.config import Arena
from agentqat.arena.request import MatchRequest, request_id
from agentqat.arena.result import MatchResult
from agentqat.errors import UserError

HARD_LIMIT_FACTOR = 1.5  # the cooperative timeout inside a match comes first; this catches a stuck kernel
MAX_ATTEMPTS = 2
ACTOR_START_SECONDS = 900  # loading the model and the base references in every actor; a cold cache converts the GGUF


def cache_counters(cache) -> dict:
    """Returns a layer cache's counters: hits, misses, bytes and entries."""
    return {"hits": cache.hits, "misses": cache.misses, "bytes": cache.bytes, "entries": len(cache.entries)}


def _evaluator_class():
    import ray

    @ray.remote(max_restarts=-1, max_task_retries=0)
    class Evaluator:
        """One worker process holding a Workbench."""

        def __init__(self, arena_json: str, name: str, threads: int):
            os.environ["OMP_NUM_THREADS"] = str(threads)
            from agentqat.arena.config import Arena as ArenaModel
            from agentqat.arena.match import Workbench

            self.name = name
            arena = ArenaModel.model_validate_json(arena_json)
            self.workbench = Workbench(arena, worker=name)
            self.workbench.prepare(arena.seed)

        def play(self, request: MatchRequest) -> dict:
            return asdict(self.workbench.play(request))

        def pid(self) -> int:
            return os.getpid()

        def cache_stats(self) -> dict:
            return cache_counters(self.workbench.cache)

    return Evaluator


def start_ray(address: str | None, num_cpus: int) -> None:
    """Connects to the Ray cluster at `address`, or starts a local one with at least `num_cpus` CPUs."""
    import ray

    if ray.is_initialized():
        return
    if address:
        ray.init(address=address, logging_level="ERROR", log_to_driver=False)
    else:
        cpus = max(num_cpus, os.cpu_count() or 1)
        ray.init(num_cpus=cpus, include_dashboard=False, logging_level="ERROR", log_to_driver=False)


class EvaluatorPool:
    """A fixed number of evaluator actors sharing one queue of match requests."""

    def __init__(self, arena: Arena, workers: int = 1, ray_address: str | None = None):
        import ray

        start_ray(ray_address, num_cpus=max(workers, 1) * arena.compute_threads)
        self.arena = arena
        evaluator = _evaluator_class()
        self.actors = [
            evaluator.options(num_cpus=arena.compute_threads, name=None).remote(
                arena.model_dump_json(), f"worker-{index}", arena.compute_threads
            )
            for index in range(workers)
        ]
        self.names = {actor: f"worker-{index}" for index, actor in enumerate(self.actors)}
        try:  # wait until every actor has loaded the model
            ray.get([actor.pid.remote() for actor in self.actors], timeout=ACTOR_START_SECONDS)
        except ray.exceptions.GetTimeoutError:
            cpus = ray.cluster_resources().get("CPU", 0)
            self.shutdown()
            raise UserError(
                f"{workers} evaluator actors of {arena.compute_threads} CPU each did not start within "
                f"{ACTOR_START_SECONDS} s; the Ray cluster has {cpus:g} CPUs",
                "use fewer --workers or a cluster with more CPUs",
            ) from None

    def run(
        self,
        requests: Iterable[MatchRequest],
        on_result: Callable[[MatchResult], None] | None = None,
        on_start: Callable[[str, MatchRequest], None] | None = None,
    ) -> list[MatchResult]:
        """Plays every request, returning results in completion order; `on_result` sees each as it lands,
        `on_start` each (worker name, request) as a worker takes it. Requests are pulled from the iterable
        only when a worker is free, so a slow producer (an LLM decoding proposals) overlaps with the matches
        in flight."""
        import ray
        from ray.exceptions import RayActorError

        incoming = iter(requests)
        queue: deque = deque()  # (request, attempt) to retry before taking new requests
        exhausted = False

        def next_request() -> tuple[MatchRequest, int] | None:
            nonlocal exhausted
            if queue:
                return queue.popleft()
            request = None if exhausted else next(incoming, None)
            exhausted = request is None
            return None if request is None else (request, 1)

        idle = list(self.actors)
        running: dict = {}  # ObjectRef -> (actor, request, attempt, started)
        results: list[MatchResult] = []
        hard_limit = self.arena.match_seconds * HARD_LIMIT_FACTOR

        def finish(result: MatchResult) -> None:
            results.append(result)
            if on_result:
                on_result(result)

        while True:
            while idle and (item := next_request()) is not None:
                request, attempt = item
                actor = idle.pop()
                running[actor.play.remote(request)] = (actor, request, attempt, time.monotonic())
                if on_start:
                    on_start(self.names[actor], request)
            if not running:
                break
            done, _ = ray.wait(list(running), num_returns=1, timeout=1.0)
            for ref in done:
                actor, request, attempt, _started = running.pop(ref)
                try:
                    finish(MatchResult.from_dict(ray.get(ref)))
                except RayActorError as error:
                    if attempt < MAX_ATTEMPTS:
                        queue.appendleft((request, attempt + 1))
                    else:
                        finish(_failed(self.arena, request, "error", f"worker died {attempt} times: {error}"))
                idle.append(actor)
            for ref, (actor, request, attempt, started) in list(running.items()):
                if time.monotonic() - started > hard_limit:
                    ray.kill(actor, no_restart=False)
                    running.pop(ref)
                    finish(_failed(self.arena, request, "timeout", f"killed after {hard_limit:.0f} s"))
                    idle.append(actor)
        return results

    def cache_stats(self) -> list[dict]:
        """Returns each actor's layer-cache counters."""
        import ray

        return ray.get([actor.cache_stats.remote() for actor in self.actors])

    def shutdown(self) -> None:
        """Stops the actors (the Ray runtime stays for the process)."""
        import ray

        for actor in self.actors:
            ray.kill(actor, no_restart=True)


class LocalPool:
    """Plays matches one at a time in this process (`--workers 0`): no Ray, same results, same interface."""

    def __init__(self, arena: Arena):
        from agentqat.arena.match import Workbench

        self.arena = arena
        self.workbench = Workbench(arena, worker="local")
        self.workbench.prepare(arena.seed)

    def run(
        self,
        requests: Iterable[MatchRequest],
        on_result: Callable[[MatchResult], None] | None = None,
        on_start: Callable[[str, MatchRequest], None] | None = None,
    ) -> list[MatchResult]:
        """Plays every request in order, with the same callbacks as EvaluatorPool.run."""
        results = []
        for request in requests:
            if on_start:
                on_start("local", request)
            results.append(self.workbench.play(request))
            if on_result:
                on_result(results[-1])
        return results

    def cache_stats(self) -> list[dict]:
        """Returns the layer-cache counters of the one in-process workbench."""
        return [cache_counters(self.workbench.cache)]

    def shutdown(self) -> None:
        """Frees the layer cache."""
        self.workbench.cache.clear()


def make_pool(arena: Arena, workers: int, ray_address: str | None = None) -> EvaluatorPool | LocalPool:
    """Returns `workers` Ray evaluator actors, or the in-process pool for 0 workers."""
    if workers < 0:
        raise UserError(f"--workers {workers} is negative", "pass 0 (in-process) or more Ray actors")
    return LocalPool(arena) if workers == 0 else EvaluatorPool(arena, workers, ray_address)


def _failed(arena: Arena, request: MatchRequest, outcome: str, message: str) -> MatchResult:
    document = request.document if isinstance(request.document, dict) else {}
    stage = arena.stage(request.stage)
    return MatchResult(
        strategy_id=request_id(request),
        strategy_name=str(document.get("name", "unnamed")),
        arena=arena.name,
        stage=stage.name,
        seed=request.seed,
        window_set=request.window_set,
        tokens=stage.windows * arena.window_tokens,
        outcome=outcome,
        message=message,
    )
