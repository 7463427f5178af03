"""Evaluator actors on GPUs as Ray places them: a real local Ray that declares 2 logical GPUs on this CPU machine.
Actors of half a GPU and of one GPU get GPU ids assigned by Ray (their torch stays on the CPU and plays matches);
an arena asking more GPUs than the cluster has is one UserError line before any actor starts."""

import pytest
from test_pool import requests

from agentqat.arena.cluster import gpu_slots
from agentqat.arena.config import Arena, Stage, load_arena
from agentqat.errors import UserError


@pytest.fixture(scope="module")
def gpu_ray():
    import ray

    ray.shutdown()  # an earlier module's Ray has no GPUs
    ray.init(num_cpus=2, num_gpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def arena(tiny_llama_dir, small_corpus_file):
    return Arena(name="tiny-gpus", model=str(tiny_llama_dir), corpus=str(small_corpus_file), window_tokens=64,
                 calibration_windows=2, stages=(Stage(name="screen", windows=2),))  # fmt: skip


def placed(gpu_ray, arena, gpus_per_worker):
    """Returns each actor's placement and the cluster's free GPUs while a pool of 2 workers of `gpus_per_worker`
    GPUs runs, after it has played 2 matches."""
    from agentqat.arena.pool import EvaluatorPool

    pool = EvaluatorPool(arena.model_copy(update={"gpus_per_worker": gpus_per_worker}), workers=2)
    try:
        results = pool.run(requests(2))
        assert [r.outcome for r in results] == ["ok", "ok"], [r.message for r in results]
        return pool.placements(), gpu_ray.available_resources().get("GPU", 0.0)
    finally:
        pool.shutdown()


def test_half_gpu_actors_get_gpu_ids_from_ray(gpu_ray, arena):
    placements, free = placed(gpu_ray, arena, 0.5)
    assert free == pytest.approx(1.0)  # 2 x 0.5 of the 2 declared GPUs taken
    for placement in placements:
        assert len(placement["gpu_ids"]) == 1 and placement["gpu_ids"][0] in ("0", "1")
        assert placement["cuda_visible_devices"] == placement["gpu_ids"][0]


def test_whole_gpu_actors_get_a_gpu_each(gpu_ray, arena):
    placements, free = placed(gpu_ray, arena, 1)
    assert free == pytest.approx(0.0)
    assert sorted(p["gpu_ids"][0] for p in placements) == ["0", "1"]
    assert all(p["cuda_visible_devices"] == p["gpu_ids"][0] for p in placements)


def test_cpu_actors_get_no_gpu(gpu_ray, arena):
    placements, free = placed(gpu_ray, arena, 0)
    assert free == pytest.approx(2.0) and all(p["gpu_ids"] == [] for p in placements)


def test_more_gpus_than_the_cluster_has_is_one_line(gpu_ray, arena):
    from agentqat.arena.pool import EvaluatorPool

    with pytest.raises(UserError, match=r"gpus_per_worker = 2 do not fit the Ray cluster's GPUs \(2 on 1 node\(s\), room for 1\)"):
        EvaluatorPool(arena.model_copy(update={"gpus_per_worker": 2}), workers=2)


def test_gpu_slots():
    assert gpu_slots([2.0], 0.5) == 4
    assert gpu_slots([2.0], 0.3) == 6  # 3 actors of 0.3 on each GPU
    assert gpu_slots([1.0, 1.0], 2) == 0  # Ray never spreads one actor over nodes
    assert gpu_slots([4.0, 2.0], 2) == 3
    assert gpu_slots([], 1) == 0


def test_gpus_per_worker_is_validated_and_left_out_of_cpu_dumps(tmp_path):
    default = load_arena("smollm2-default")
    assert default.gpus_per_worker == 0 and "gpus_per_worker" not in default.model_dump()  # hashes of CPU arenas unchanged
    half = Arena.model_validate({**default.model_dump(), "gpus_per_worker": 0.5})
    assert Arena.model_validate_json(half.model_dump_json()).gpus_per_worker == 0.5
    base = (tmp_path / "base.toml", 'name = "g"\n[[stages]]\nname = "s"\nwindows = 1\n')
    for value, message in (("1.5", "gpus_per_worker: Value error, above 1 must be a whole number"), ("-1", "gpus_per_worker: Input should be greater than or equal to 0")):
        path = tmp_path / f"gpus{value}.toml"
        path.write_text(f"gpus_per_worker = {value}\n" + base[1])
        with pytest.raises(UserError, match=message):
            load_arena(str(path))
    path = tmp_path / "two.toml"
    path.write_text("gpus_per_worker = 2\n" + base[1])
    assert load_arena(str(path)).gpus_per_worker == 2
