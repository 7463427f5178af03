"""The session layer: manifests read back whole, runs made by run_evolve resumed through the CLI, finished runs
shown without starting anything, damaged or foreign run files refused in one line, resources closed on exit."""

import json
import sys

import pytest

from agentqat.arena.config import load_arena
from agentqat.cli import main
from agentqat.errors import UserError
from agentqat.rundir.manifest import LlmSettings, read_manifest
from agentqat.rundir.store import RunStore
from agentqat.session import Resources, evolve_manifest, run_evolve


@pytest.fixture(scope="module")
def arena(sensitive_llama_dir, small_corpus_file, tmp_path_factory):
    path = tmp_path_factory.mktemp("arena") / "one-stage.toml"
    path.write_text(
        f'name = "one-stage"\nmodel = "{sensitive_llama_dir}"\ncorpus = "{small_corpus_file}"\nwindow_tokens = 64\n'
        'calibration_windows = 4\nbits_budget = 5.0\n[[stages]]\nname = "only"\nwindows = 2\n'
    )
    return load_arena(str(path))


@pytest.fixture(scope="module")
def finished_run(arena, tmp_path_factory):
    """A run made by run_evolve directly (no CLI), ended after 1 generation of 2 random proposals."""
    directory = tmp_path_factory.mktemp("runs") / "direct"
    manifest = evolve_manifest(arena, generator="random", seed=3, population=2, generations=1)
    run_evolve(directory, manifest, workers=0)
    return directory


def test_an_llm_run_recorded_without_llm_settings_reads_back_with_the_defaults(arena, tmp_path):
    manifest = evolve_manifest(arena, generator="llm", population=2).model_dump(mode="json")
    RunStore.create(tmp_path / "bench", {key: value for key, value in manifest.items() if key != "llm"})
    assert read_manifest(tmp_path / "bench").llm == LlmSettings()
    assert evolve_manifest(arena, LlmSettings(url="http://127.0.0.1:1/v1"), generator="random").llm is None


def test_a_finished_run_shows_itself_and_starts_nothing(finished_run, monkeypatch, capsys):
    def refuse(*args, **kwargs):
        raise AssertionError("a finished run must not create an evaluator pool")

    monkeypatch.setattr("agentqat.arena.pool.make_pool", refuse)
    assert main(["evolve", "--resume", str(finished_run)]) == 0
    out = capsys.readouterr().out
    assert "leaderboard" in out and "stopped: 1 generations done" in out
    assert f"agentqat evolve --resume {finished_run} --generations 3" in " ".join(out.split())
    assert "ray" not in sys.modules or not sys.modules["ray"].is_initialized()


def test_a_run_made_by_run_evolve_resumes_through_the_cli_with_its_settings(finished_run, tmp_path, capsys):
    import shutil

    directory = tmp_path / "extended"
    shutil.copytree(finished_run, directory)
    before = read_manifest(directory)
    assert main(["evolve", "--resume", str(directory), "--workers", "0", "--generations", "2"]) == 0, capsys.readouterr().err
    after = read_manifest(directory)
    assert after.settings.generations == 2 and after.arena == before.arena
    assert (after.settings.generator, after.settings.seed, after.settings.population) == ("random", 3, 2)
    summary = json.loads((directory / "summary.json").read_text())
    assert summary["generations"] == 2 and summary["stop_rule"] == "generations"
    assert [r["generation"] for r in RunStore.open(directory).read("generations")] == [0, 1]


@pytest.mark.parametrize(
    ("file", "text", "message"),
    [
        ("manifest.json", '{"kind": ', "manifest.json is not JSON"),
        ("manifest.json", '{"schema_version": 1, "kind": "party"}', "is not an agentqat run manifest"),
        ("manifest.json", "[1, 2]", "manifest.json is not a JSON object"),
        ("results.jsonl", '{"a": 1}\n{"b": 2}\n', "results.jsonl record 1 is not a results record"),
        ("results.jsonl", "not json\n{}\n", "results.jsonl line 1 is not JSON"),
        ("generations.jsonl", '[1]\n', "generations.jsonl line 1 is not a JSON object"),
        ("strategies.jsonl", '{"generation": -1, "index": 0, "document": {}}\n', "strategies.jsonl record 1 is not a strategies record"),
        ("summary.json", '{"stop_reason": 3}', "summary.json is not a run summary"),
    ],
)
def test_damaged_or_foreign_run_files_are_one_line_and_exit_2(finished_run, tmp_path, capsys, file, text, message):
    import shutil

    directory = tmp_path / "damaged"
    shutil.copytree(finished_run, directory)
    (directory / file).write_text(text)
    for command in (["show", str(directory)], ["evolve", "--resume", str(directory), "--workers", "0"]):
        assert main(command) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], (command, err)


def test_a_torn_last_line_is_skipped(finished_run, tmp_path, capsys):
    import shutil

    directory = tmp_path / "torn"
    shutil.copytree(finished_run, directory)
    with open(directory / "results.jsonl", "a") as results:
        results.write('{"schema_version": 1, "strategy_id": "ab')
    assert main(["show", str(directory)]) == 0, capsys.readouterr().err


def test_resources_close_the_pool_on_ctrl_c(arena, monkeypatch):
    events = []

    class Recording:
        def shutdown(self):
            events.append("pool closed")

    monkeypatch.setattr("agentqat.arena.pool.make_pool", lambda arena, workers, address=None, reporter=None: Recording())
    with pytest.raises(KeyboardInterrupt):
        with Resources(arena, workers=1) as shared:
            assert shared.servers == {} and isinstance(shared.pool, Recording)
            raise KeyboardInterrupt
    assert events == ["pool closed"]


def test_a_run_refuses_shared_resources_without_the_server_its_llm_settings_need(arena, tmp_path, monkeypatch):
    class Idle:
        def run(self, requests, on_result=None, on_start=None):
            return []

        def shutdown(self):
            pass

    monkeypatch.setattr("agentqat.arena.pool.make_pool", lambda arena, workers, address=None, reporter=None: Idle())
    with Resources(arena, workers=1) as shared, pytest.raises(UserError, match="managed vLLM server"):
        run_evolve(tmp_path / "llm", evolve_manifest(arena, generator="llm", population=2), resources=shared)


def test_shared_resources_open_one_server_per_proposer_model_and_give_each_run_its_own(arena, tmp_path, monkeypatch):
    from contextlib import contextmanager

    from agentqat.rundir.manifest import LlmSettings

    opened = []

    @contextmanager
    def server(llm, log_path, reporter=None):  # records what the real vllm_server would start
        opened.append((llm.model, log_path.name))
        yield f"server of {llm.model}"

    monkeypatch.setattr("agentqat.session.resources.vllm_server", server)
    monkeypatch.setattr("agentqat.arena.pool.make_pool", lambda arena, workers, address=None, reporter=None: type("Idle", (), {"shutdown": lambda self: None})())
    smollm2, gemma = LlmSettings(), LlmSettings(model="gemma3-270m")
    with Resources(arena, llm=(smollm2, smollm2.model_copy(update={"reflection": False}), gemma), log_dir=tmp_path) as shared:
        assert shared.workers == 1  # beside managed servers
        assert opened == [("smollm2-135m", "llm-server.log"), ("gemma3-270m", "llm-server-gemma3-270m.log")]
        assert shared.server_for(gemma) == "server of gemma3-270m" and shared.server_for(smollm2) == "server of smollm2-135m"
        assert shared.server_for(None) is None
