"""Ray evaluator actors on a real local Ray with 2 CPUs: parallel matches, a killed actor loses nothing."""

import threading
import time

import pytest

from agentqat.arena.config import Arena, Stage
from agentqat.arena.request import MatchRequest


@pytest.fixture(scope="module")
def ray_session():
    import ray

    ray.shutdown()  # an earlier test's CLI run may have started Ray in this process with other resources
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def arena(tiny_llama_dir, tmp_path_factory):
    from agentqat.data import load_corpus

    corpus = load_corpus("lee-news")
    path = tmp_path_factory.mktemp("pool-corpus") / "news.txt"
    path.write_text("\n".join(corpus.evaluation.splitlines()[:30] + corpus.calibration.splitlines()[:30] + corpus.heldout.splitlines()[:10]))
    return Arena(name="tiny-pool", model=str(tiny_llama_dir), corpus=str(path), window_tokens=64, calibration_windows=2, stages=(Stage(name="screen", windows=2),))


def requests(count):
    return [MatchRequest({"name": f"s{i}", "default": {"weight": {"bits": (2, 3, 4, 5, 6, 8)[i % 6], "group_size": 32}}}, "screen", 0) for i in range(count)]


def test_two_workers_play_every_match_and_agree_with_each_other(ray_session, arena):
    from agentqat.arena.pool import EvaluatorPool

    pool = EvaluatorPool(arena, workers=2)
    seen = []
    results = pool.run(requests(6) + requests(6)[:2], on_result=seen.append)
    pool.shutdown()
    assert len(results) == len(seen) == 8
    assert {r.worker for r in results} == {"worker-0", "worker-1"}
    by_id = {}
    for result in results:
        by_id.setdefault(result.strategy_id, []).append(result.quality)
    assert all(len(set(qualities)) == 1 for qualities in by_id.values())  # same seed, same numbers, any worker


def test_killing_an_actor_mid_run_loses_no_result(ray_session, arena):
    from agentqat.arena.pool import EvaluatorPool

    pool = EvaluatorPool(arena, workers=2)
    victim = pool.actors[0]
    killer = threading.Timer(1.0, lambda: ray_session.kill(victim, no_restart=False))
    killer.start()
    results = pool.run(requests(10))
    killer.join()
    pool.shutdown()
    assert len(results) == 10
    assert {r.strategy_name for r in results} == {f"s{i}" for i in range(10)}
    assert all(r.outcome in ("ok", "collapse") for r in results), [(r.outcome, r.message) for r in results]
