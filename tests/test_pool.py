"""Ray evaluator actors on a real local Ray with 2 CPUs: parallel matches, a killed actor loses nothing, phases
reported from inside the actors; joining a Ray head started on loopback; an unreachable cluster is one line."""

import threading
import time

import pytest
from test_progress import Recorder

from agentqat.arena.config import Arena, Stage
from agentqat.arena.request import MatchRequest
from agentqat.errors import UserError


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


def gptq_request(name, calibration_windows):
    document = {"name": name, "default": {"weight": {"bits": 4, "group_size": 32, "rounding": "gptq"}}}
    return MatchRequest(document, "screen", 0, 0, calibration_windows)


def names(recorder):
    return [event[1] for event in recorder.events if event[0] == "start"]


def test_the_in_process_pool_reports_loading_base_references_and_calibration(arena):
    from agentqat.arena.pool import make_pool

    shown = Recorder()
    pool = make_pool(arena, 0, reporter=shown)
    assert names(shown) == ["loading the model", "base references"]
    assert ("step", 1) in shown.events  # one window set of base references
    pool.run([gptq_request("gptq-local", 4)])
    assert names(shown)[2:] == ["collecting calibration statistics"]
    assert shown.events[-1] == ("end", "collecting calibration statistics")
    assert sum(event[1] for event in shown.events[-4:] if event[0] == "step") == 4  # one step per window


def test_actors_phases_reach_the_driver_and_a_calibrating_match_says_so(ray_session, arena):
    from agentqat.arena.pool import EvaluatorPool

    shown = Recorder()
    pool = EvaluatorPool(arena, workers=2, reporter=shown)
    started = names(shown)
    assert started[0] == "starting evaluator actors" and "base references" in started[1:], shown.events
    shown.events.clear()
    results = pool.run([gptq_request("gptq-pooled", 3)])  # 3 windows: a calibration no other test collects
    pool.shutdown()
    assert results[0].outcome in ("ok", "collapse"), results[0].message
    calibration = [event for event in shown.events if event[0] == "start"]
    assert calibration and calibration[0][1:3] == ("collecting calibration statistics", 3), shown.events
    assert "match gptq-pooled" in calibration[0][3]
    assert shown.events[-1] == ("end", "collecting calibration statistics")


def test_an_address_where_nothing_listens_is_one_line_within_seconds():
    import socket

    from agentqat.arena.cluster import check_address

    with socket.socket() as probe:  # a port that was free a moment ago
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    started = time.perf_counter()
    with pytest.raises(UserError, match=f"no Ray cluster answers at 127.0.0.1:{port}") as error:
        check_address(f"127.0.0.1:{port}")
    assert time.perf_counter() - started < 5
    assert "\n" not in str(error.value) and "ray_address" in str(error.value)


@pytest.mark.parametrize("address", ["127.0.0.1", "host:port", ":6379", "ray://:1", "10.0.0.1:70000"])
def test_a_malformed_address_is_one_line(address):
    from agentqat.arena.cluster import check_address

    with pytest.raises(UserError, match="is not host:port"):
        check_address(address)


def test_loopback_hosts():
    from agentqat.arena.cluster import is_loopback, split_address

    assert [is_loopback(host) for host in ("127.0.0.1", "127.0.1.1", "localhost", "::1", "192.0.2.2", "ray")] == [
        True, True, True, True, False, False
    ]  # fmt: skip
    assert split_address("ray://[::1]:10001") == ("::1", 10001)


@pytest.mark.slow
def test_joins_a_head_started_on_loopback_and_plays_a_match(loopback_head, arena):
    import ray

    from agentqat.arena.pool import make_pool

    ray.shutdown()  # this module's local Ray, if an earlier test started it
    shown = Recorder()
    try:
        pool = make_pool(arena, 1, ray_address=loopback_head, reporter=shown)
        assert ray.get_runtime_context().gcs_address.endswith(loopback_head.rsplit(":", 1)[1])
        results = pool.run(requests(1))
        pool.shutdown()
    finally:
        ray.shutdown()
    assert names(shown)[:2] == ["joining Ray", "starting evaluator actors"]
    assert results[0].outcome in ("ok", "collapse") and results[0].worker == "worker-0", results[0].message


def test_sensitivity_probes_are_a_phase_with_a_step_per_probe(arena):
    from agentqat.arena.pool import LocalPool
    from agentqat.arena.probes import measure
    from agentqat.models import load_facts

    pool, shown = LocalPool(arena), Recorder()
    facts = load_facts(arena.model)
    sensitivities, probes = measure(pool.run, arena, facts, reporter=shown)
    assert probes == facts.num_layers == len(sensitivities)
    assert shown.events[0][:3] == ("start", "sensitivity probes", facts.num_layers)
    assert shown.events[1:-1] == [("step", 1)] * facts.num_layers
    assert shown.events[-1] == ("end", "sensitivity probes")
