"""Ray evaluator actors: each loads the arena's Workbench once and plays matches on request.

A dead actor is restarted by Ray (max_restarts) and its match retried once; a match that dies twice, or
runs past the arena's hard limit (the actor is then killed and restarted), is recorded as a failed result.
Each actor reports its phases (loading the model, base references, collecting calibration statistics for a
match) into a PhaseLog that the driver polls and shows on its reporter, one actor's phase at a time.
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import asdict

from agentqat.arena.cluster import check_gpus, start_ray
from agentqat.arena.config import Arena
from agentqat.arena.request import MatchRequest, request_id
from agentqat.arena.result import MatchResult
from agentqat.errors import UserError
from agentqat.progress import PhaseLog, PhaseMirror, Reporter, phase

HARD_LIMIT_FACTOR = 1.5  # the cooperative timeout inside a match comes first; this catches a stuck kernel
MAX_ATTEMPTS = 2
CLOSE_SECONDS = 5.0  # how long the last phase events of the actors may take to come back
ACTOR_START_SECONDS = 900  # loading the model and the base references in every actor; a cold cache converts the GGUF


def cache_counters(cache) -> dict:
    """Returns a layer cache's counters: hits, misses, bytes and entries."""
    return {"hits": cache.hits, "misses": cache.misses, "bytes": cache.bytes, "entries": len(cache.entries)}


def _evaluator_class():
    import ray

    # Two threads: one plays, the other answers `phase_events` while it does.
    @ray.remote(max_restarts=-1, max_task_retries=0, max_concurrency=2)
    class Evaluator:
        """One worker process holding a Workbench, loaded on the first call (again after a restart)."""

        def __init__(self, arena_json: str, name: str, threads: int):
            os.environ["OMP_NUM_THREADS"] = str(threads)
            from agentqat.arena.config import Arena as ArenaModel

            self.name = name
            self.arena = ArenaModel.model_validate_json(arena_json)
            self.log = PhaseLog()
            self.lock = threading.Lock()
            self.loaded = None

        def workbench(self):
            with self.lock:
                if self.loaded is None:
                    from agentqat.arena.match import Workbench

                    workbench = Workbench(self.arena, worker=self.name, reporter=self.log)
                    workbench.prepare(self.arena.seed)
                    self.loaded = workbench
                return self.loaded

        def prepare(self) -> int:
            self.workbench()
            return os.getpid()

        def play(self, request: MatchRequest) -> dict:
            return asdict(self.workbench().play(request))

        def phase_events(self) -> list[tuple]:
            return self.log.drain()

        def pid(self) -> int:
            return os.getpid()

        def cache_stats(self) -> dict:
            return cache_counters(self.workbench().cache)

        def placement(self) -> dict:
            gpus = ray.get_runtime_context().get_accelerator_ids().get("GPU", [])
            return {"gpu_ids": [str(gpu) for gpu in gpus], "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES")}

    return Evaluator


class EvaluatorPool:
    """A fixed number of evaluator actors sharing one queue of match requests."""

    def __init__(
        self,
        arena: Arena,
        workers: int = 1,
        ray_address: str | None = None,
        dashboard: bool = False,
        reporter: Reporter | None = None,
    ):
        start_ray(ray_address, max(workers, 1) * arena.compute_threads, dashboard, reporter)
        check_gpus(workers, arena.gpus_per_worker)
        self.arena = arena
        self.reporter = reporter
        evaluator = _evaluator_class()
        self.actors = [
            evaluator.options(num_cpus=arena.compute_threads, num_gpus=arena.gpus_per_worker, name=None).remote(
                arena.model_dump_json(), f"worker-{index}", arena.compute_threads
            )
            for index in range(workers)
        ]
        self.names = {actor: f"worker-{index}" for index, actor in enumerate(self.actors)}
        try:
            self._start(workers)
        except BaseException:
            self.shutdown()
            raise

    def _start(self, workers: int) -> None:
        """Waits until every actor runs (the phase "starting evaluator actors"), then until every actor has
        loaded the model and the base references (their own phases, shown from one actor at a time)."""
        import ray

        deadline = time.monotonic() + ACTOR_START_SECONDS
        gpus = f" and {self.arena.gpus_per_worker:g} GPU" if self.arena.gpus_per_worker else ""
        detail = f"{workers} Ray actors of {self.arena.compute_threads} CPU{gpus} each"
        with phase(self.reporter, "starting evaluator actors", total=workers, detail=detail) as step:
            self._wait([actor.pid.remote() for actor in self.actors], deadline, step=step)
        watch = _PhaseWatch(self.names, self.reporter)
        prepared = [actor.prepare.remote() for actor in self.actors]
        try:
            self._wait(prepared, deadline, watch=watch)
        finally:
            watch.close()
        try:
            ray.get(prepared)
        except ray.exceptions.RayTaskError as error:
            if isinstance(error.cause, UserError):  # e.g. a model the actors cannot load
                raise error.cause from None
            raise

    def _wait(self, refs: list, deadline: float, step: Callable[[int], None] | None = None, watch: _PhaseWatch | None = None) -> None:
        """Waits until every ref is ready, advancing `step` as they are and polling `watch` every half second;
        raises a UserError past the deadline."""
        import ray

        pending = list(refs)
        while pending:
            if time.monotonic() > deadline:
                cpus = ray.cluster_resources().get("CPU", 0)
                raise UserError(
                    f"{len(self.actors)} evaluator actors of {self.arena.compute_threads} CPU each did not start "
                    f"within {ACTOR_START_SECONDS} s; the Ray cluster has {cpus:g} CPUs",
                    "use fewer workers or a cluster with more CPUs",
                )
            ready, pending = ray.wait(pending, num_returns=1, timeout=0.5)
            if step and ready:
                step(len(ready))
            if watch:
                watch.poll()

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
        watch = _PhaseWatch(self.names, self.reporter)  # e.g. a match collecting calibration statistics

        def finish(result: MatchResult) -> None:
            results.append(result)
            if on_result:
                on_result(result)

        try:
            while True:
                while idle and (item := next_request()) is not None:
                    request, attempt = item
                    actor = idle.pop()
                    running[actor.play.remote(request)] = (actor, request, attempt, time.monotonic())
                    watch.labels[actor] = f"{self.names[actor]}, match {_name(request)}"
                    if on_start:
                        on_start(self.names[actor], request)
                if not running:
                    break
                done, _ = ray.wait(list(running), num_returns=1, timeout=1.0)
                watch.poll()
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
        finally:
            watch.close()
        return results

    def cache_stats(self) -> list[dict]:
        """Returns each actor's layer-cache counters."""
        import ray

        return ray.get([actor.cache_stats.remote() for actor in self.actors])

    def placements(self) -> list[dict]:
        """Returns, per actor in order, the GPU ids Ray assigned it and its CUDA_VISIBLE_DEVICES (None: not set)."""
        import ray

        return ray.get([actor.placement.remote() for actor in self.actors])

    def shutdown(self) -> None:
        """Stops the actors (the Ray runtime stays for the process)."""
        import ray

        for actor in self.actors:
            ray.kill(actor, no_restart=True)


class LocalPool:
    """Plays matches one at a time in this process (`--workers 0`): no Ray, same results, same interface."""

    def __init__(self, arena: Arena, reporter: Reporter | None = None):
        from agentqat.arena.match import Workbench

        self.arena = arena
        self.workbench = Workbench(arena, worker="local", reporter=reporter)
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


def make_pool(
    arena: Arena,
    workers: int,
    ray_address: str | None = None,
    dashboard: bool = False,
    reporter: Reporter | None = None,
) -> EvaluatorPool | LocalPool:
    """Returns `workers` Ray evaluator actors (Ray's dashboard only if `dashboard`), or the in-process pool for
    0 workers; their phases (starting Ray, loading the model, base references, calibration) go to `reporter`."""
    if workers < 0:
        raise UserError(f"workers is {workers}", "set 0 (in-process) or more Ray actors")
    if workers == 0:
        return LocalPool(arena, reporter)
    return EvaluatorPool(arena, workers, ray_address, dashboard, reporter)


class _PhaseWatch:
    """Polls the actors' phases without blocking and shows them, labelled, through one PhaseMirror."""

    def __init__(self, names: dict, reporter: Reporter | None):
        self.labels = dict(names)  # actor -> what its phase is shown as coming from
        self.mirror = PhaseMirror(reporter)
        self.pending: dict = {}  # ObjectRef of a `phase_events` call -> actor

    def poll(self) -> None:
        """Replays the events that have come back and asks again the actors that are not being asked."""
        import ray

        asked = set(self.pending.values())
        for actor in self.labels:
            if actor not in asked:
                self.pending[actor.phase_events.remote()] = actor
        self._replay(ray.wait(list(self.pending), num_returns=len(self.pending), timeout=0)[0])

    def close(self) -> None:
        """Replays the events not replayed yet (waiting a few seconds at most) and ends the phase shown, if any."""
        import ray

        self._replay(ray.wait(list(self.pending), num_returns=len(self.pending), timeout=CLOSE_SECONDS)[0])
        self.pending.update({actor.phase_events.remote(): actor for actor in self.labels})
        self._replay(ray.wait(list(self.pending), num_returns=len(self.pending), timeout=CLOSE_SECONDS)[0])
        self.mirror.finish()

    def _replay(self, refs: list) -> None:
        import ray

        for ref in refs:
            actor = self.pending.pop(ref)
            try:
                self.mirror.show(actor, ray.get(ref), self.labels[actor])
            except ray.exceptions.RayError:  # a dead actor's open phase ends with it
                if self.mirror.source == actor:
                    self.mirror.finish()


def _name(request: MatchRequest) -> str:
    document = request.document if isinstance(request.document, dict) else {}
    return str(document.get("name", "unnamed"))


def _failed(arena: Arena, request: MatchRequest, outcome: str, message: str) -> MatchResult:
    stage = arena.stage(request.stage)
    return MatchResult(
        strategy_id=request_id(request),
        strategy_name=_name(request),
        arena=arena.name,
        stage=stage.name,
        seed=request.seed,
        window_set=request.window_set,
        tokens=stage.windows * arena.window_tokens,
        outcome=outcome,
        message=message,
    )
