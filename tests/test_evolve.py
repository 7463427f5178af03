"""The evolution loop on a tiny model sensitive to quantization, played in process; resume after a crash and
after SIGKILL ends with the leaderboard of an uninterrupted run; `show` reads a run back."""

import copy
import functools
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import asdict

import numpy as np
import pytest

from agentqat.arena.pool import LocalPool
from agentqat.arena.recorded import RecordedPlayer
from agentqat.evolution.loop import EvolveSettings, clear_winner, evolve, tournament_cost
from agentqat.generators import Evaluated, make_generator
from agentqat.generators.base import Cost, GeneratorRecord, ranked_parents
from agentqat.generators.evopress import level_switch, units_of
from agentqat.generators.prior import best_uniform, uniform_prior
from agentqat.generators.random import RandomGenerator
from agentqat.models import load_facts
from agentqat.rundir.journal import EvolveJournal, read_run
from agentqat.rundir.store import RunStore
from agentqat.strategy.canonical import canonical_id
from agentqat.strategy.document import strategy_id
from agentqat.strategy.layout import layout_bits
from agentqat.strategy.repair import within
from agentqat.strategy.space import SearchSpace


@pytest.fixture(scope="module")
def arena_file(sensitive_llama_dir, small_corpus_file, tmp_path_factory):
    path = tmp_path_factory.mktemp("arena") / "tiny.toml"
    path.write_text(
        f'name = "tiny"\nmodel = "{sensitive_llama_dir}"\ncorpus = "{small_corpus_file}"\nwindow_tokens = 64\n'
        'calibration_windows = 4\nbits_budget = 5.0\n'
        '[[stages]]\nname = "screen"\nwindows = 2\npromote = 0.5\n'
        '[[stages]]\nname = "confirm"\nwindows = 2\nwindow_sets = 3\n'
    )
    return path


@pytest.fixture(scope="module")
def arena(arena_file):
    from agentqat.arena.config import load_arena

    return load_arena(str(arena_file))


@pytest.fixture(scope="module")
def pool(arena):
    return LocalPool(arena)


def run_evolve(arena, pool, directory, settings, crash_after=None, generator=None):
    """Runs (or resumes) an evolve run in `directory` with `generator` (else the settings' one); `crash_after`
    matches, the player raises (a crash)."""
    store = RunStore.open(directory) if (directory / "manifest.json").exists() else RunStore.create(
        directory, {"kind": "evolve", "arena": arena.model_dump(), "settings": asdict(settings)}
    )
    played = []

    def run(requests, on_result=None, on_start=None):
        def counted(result):
            played.append(result)
            on_result(result)
            if crash_after is not None and len(played) >= crash_after:
                raise RuntimeError("crash")

        return pool.run(requests, counted, on_start)

    space = SearchSpace(load_facts(arena.model), arena.bits_budget)
    generator = generator or make_generator(settings.generator, space)
    outcome = evolve(generator, arena, RecordedPlayer(run, store), settings, EvolveJournal(store))
    return outcome, played


def leaderboard(outcome):
    return [(row.strategy_id, row.score, row.survives) for row in outcome.rows]


@pytest.mark.parametrize("generator", ["random", "evo"])
def test_generations_keep_the_best_survivors_and_record_everything(arena, pool, tmp_path, generator):
    settings = EvolveSettings(generator=generator, seed=3, population=3, generations=3, stop_when_clear=False, patience=5)
    outcome, played = run_evolve(arena, pool, tmp_path / "run", settings)
    assert len(outcome.generations) == 3 and outcome.stop_reason == "3 generations done"
    run = read_run(tmp_path / "run")
    proposals = [r for r in RunStore.open(tmp_path / "run").read("strategies")]
    ids = [r["strategy_id"] for r in proposals]
    assert len(ids) == len(set(ids)) == 9  # 3 generations of 3, never an id twice
    results = RunStore.open(tmp_path / "run").read("results")
    assert len(results) == outcome.matches == len(played)
    assert {r["strategy_id"] for r in results if r["stage"] == "screen"} == set(ids)  # every proposal played
    # the population: the best `population` survivors of the last stage, best first (elitism over generations)
    survivors = [row for row in outcome.rows if row.survives]
    assert [strategy_id(m.document) for m in outcome.population] == [row.strategy_id for row in survivors][:3]
    best = [g.best_score for g in outcome.generations if g.best_score is not None]
    assert best == sorted(best)
    assert run.stages["confirm"] == list(outcome.rows)
    assert [g["generation"] for g in run.generations] == [0, 1, 2]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["stop_reason"] == outcome.stop_reason and len(summary["leaderboard"]) == len(outcome.rows)


def test_the_match_budget_limits_the_run(arena, pool, tmp_path):
    settings = EvolveSettings(generator="random", seed=1, population=4, generations=10, match_budget=14, stop_when_clear=False, patience=10)
    outcome, _ = run_evolve(arena, pool, tmp_path / "run", settings)
    assert outcome.stop_reason.startswith("match budget of 14 spent")
    # a generation takes only what the budget pays for if every promotion happens: 4 (4 + 2 x 3 matches), then 1
    assert outcome.matches <= 14
    assert [g.proposed for g in outcome.generations] == [4, 1]


def test_the_token_budget_cuts_the_last_generation_to_fit(arena, pool, tmp_path):
    assert tournament_cost(arena, 4) == Cost(matches=4 + 2 * 3, tokens=(4 + 2 * 3) * 2 * 64)
    settings = EvolveSettings(generator="random", seed=1, population=4, generations=10, token_budget=1800,
                              stop_when_clear=False, patience=10)  # fmt: skip
    outcome, played = run_evolve(arena, pool, tmp_path / "run", settings)
    assert outcome.stop_rule == "token_budget" and outcome.tokens <= 1800
    assert outcome.tokens == sum(2 * 64 for _ in played) and outcome.generations[-1].tokens == outcome.tokens
    assert [g.proposed for g in outcome.generations] == [4, 1]  # 1,280 tokens, then what 520 pays for
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["tokens"] == outcome.tokens


def test_the_shared_prior_is_generation_zero_and_twins_play_once(arena, pool, tmp_path):
    facts = load_facts(arena.model)
    prior = uniform_prior(SearchSpace(facts, arena.bits_budget))
    twin = copy.deepcopy(prior[0])
    twin["default"]["activation"]["format"] = "fp8_e4m3"  # no effect: activations stay at 16 bits
    twin["name"] = "twin"
    settings = EvolveSettings(generator="evo", seed=2, population=3, generations=2, stop_when_clear=False, patience=5)
    store = RunStore.create(tmp_path / "run", {"kind": "evolve", "arena": arena.model_dump(), "settings": asdict(settings)})
    generator = make_generator("evo", SearchSpace(facts, arena.bits_budget))
    identity = functools.partial(canonical_id, facts=facts)
    outcome = evolve(generator, arena, RecordedPlayer(pool.run, store), settings, EvolveJournal(store),
                     identity=identity, prior=[*prior, twin])  # fmt: skip
    proposals = store.read("strategies")
    assert [(p["generation"], p["generator"]) for p in proposals][: len(prior)] == [(0, "prior")] * len(prior)
    assert outcome.generations[0].proposed == len(prior)  # the twin was not played
    assert {p["generator"] for p in proposals if p["generation"] == 1} == {"evo"}
    assert strategy_id(twin) not in {p["strategy_id"] for p in proposals}


def test_while_everything_collapses_evo_breeds_from_the_lowest_kl_collapse(arena):
    space = SearchSpace(load_facts(arena.model), arena.bits_budget)
    documents = uniform_prior(space) + RandomGenerator(space).propose([], 2, np.random.default_rng(0))
    failed = [Evaluated(documents[0], -math.inf, False, "collapse", 6.0, 4.5), Evaluated(documents[1], -math.inf, False, "collapse", 2.0, 4.5),
              Evaluated(documents[2], -math.inf, False, "nan", None, 4.5)]  # fmt: skip
    assert [m.document for m in ranked_parents(failed)] == [documents[1], documents[0]]  # by KL; a NaN never a parent
    children = make_generator("evo", space).propose(failed, 3, np.random.default_rng(1))
    assert children and all(child["notes"].endswith(f"of {documents[1]['name']}") for child in children)  # offspring, not random
    survivor = Evaluated(documents[3], -1.0, True, "ok", 9.0, 4.5)
    assert ranked_parents([*failed, survivor]) == [survivor]  # once something survives, only survivors breed


def test_no_improvement_stops_the_run(arena, pool, tmp_path):
    settings = EvolveSettings(generator="random", seed=0, population=2, generations=30, patience=1, stop_when_clear=False)
    outcome, _ = run_evolve(arena, pool, tmp_path / "run", settings)
    assert outcome.stop_reason == "no improvement for 1 generations"
    assert not outcome.generations[-1].improved and len(outcome.generations) < 30


def test_a_crashed_run_resumes_to_the_same_leaderboard(arena, pool, tmp_path):
    settings = EvolveSettings(generator="evo", seed=5, population=3, generations=3, stop_when_clear=False, patience=5)
    whole, _ = run_evolve(arena, pool, tmp_path / "whole", settings)
    with pytest.raises(RuntimeError, match="crash"):
        run_evolve(arena, pool, tmp_path / "cut", settings, crash_after=13)
    resumed, played = run_evolve(arena, pool, tmp_path / "cut", settings)
    assert leaderboard(resumed) == leaderboard(whole)
    assert len(played) == whole.matches - 13  # recorded matches were not played again
    assert [asdict(g) | {"elapsed_s": 0} for g in resumed.generations] == [asdict(g) | {"elapsed_s": 0} for g in whole.generations]


class NotingGenerator:
    """The random generator, noting what it is told (as the LLM generator notes reflections) and keeping what
    a resumed run hands back."""

    def __init__(self, space):
        self.inner = make_generator("random", space)
        self.name = "random"
        self.restored = []
        self._records = []

    def propose(self, population, count, rng):
        return self.inner.propose(population, count, rng)

    def tell(self, evaluated):
        self._records.append(GeneratorRecord("notes", {"told": sorted(strategy_id(e.document) for e in evaluated)}))

    def take_records(self):
        records, self._records = self._records, []
        return records

    def restore(self, records):
        self.restored.extend(records)


def test_a_resumed_run_hands_the_generator_back_what_it_noted(arena, pool, tmp_path):
    """Notes are recorded once per finished generation, with it; a resumed run restores them for every
    generation it replays, so a generator with memory (the LLM's reflection) goes on as if never stopped."""
    settings = EvolveSettings(generator="random", seed=2, population=3, generations=3, stop_when_clear=False, patience=5)
    space = SearchSpace(load_facts(arena.model), arena.bits_budget)
    with pytest.raises(RuntimeError, match="crash"):
        run_evolve(arena, pool, tmp_path / "run", settings, crash_after=13, generator=NotingGenerator(space))
    store = RunStore.open(tmp_path / "run")
    finished = [g["generation"] for g in store.read("generations")]
    assert finished and [n["generation"] for n in store.read("notes")] == finished  # the cut one is not noted
    before = {n["generation"]: n["told"] for n in store.read("notes")}

    resumed = NotingGenerator(space)
    outcome, _ = run_evolve(arena, pool, tmp_path / "run", settings, generator=resumed)
    assert [record.data["told"] for record in resumed.restored] == [before[g] for g in finished]
    notes = store.read("notes")
    assert [n["generation"] for n in notes] == list(range(len(outcome.generations)))  # each generation once
    assert [n["told"] for n in notes[: len(finished)]] == [before[g] for g in finished]


class RunsDryGenerator(NotingGenerator):
    """The noting generator, whose replies are all rejected from generation 2 on: it notes the rejection and
    proposes nothing, which ends the run."""

    def propose(self, population, count, rng):
        if len(self.told) < 2:
            return super().propose(population, count, rng)
        self._records.append(GeneratorRecord("rejections", {"reason": "every reply rejected"}))
        return []

    def tell(self, evaluated):
        self.told.append(len(evaluated))
        super().tell(evaluated)


def test_a_run_that_ended_with_nothing_new_is_not_noted_twice_when_resumed(arena, pool, tmp_path):
    """Resuming a run that ended because its generator proposed nothing (the LLM arm whose every reply was
    rejected) proposes that generation again, to the same end; its notes stay recorded once."""
    settings = EvolveSettings(generator="random", seed=2, population=2, generations=5, stop_when_clear=False, patience=5)
    space = SearchSpace(load_facts(arena.model), arena.bits_budget)
    noted = []
    for _ in range(2):
        generator = RunsDryGenerator(space)
        generator.told = []
        outcome, _ = run_evolve(arena, pool, tmp_path / "run", settings, generator=generator)
        assert outcome.stop_reason == "the generator proposed nothing new" and len(outcome.generations) == 2
        noted.append(RunStore.open(tmp_path / "run").read("rejections"))
    assert noted[0] == noted[1] and noted[0] and {n["generation"] for n in noted[0]} == {2}


def test_clear_winner_needs_a_full_population_and_separate_intervals():
    from agentqat.arena.scoring import Aggregate, Ranked

    def member(name, ci):
        agg = Aggregate(name, name, "a", "confirm", "ok", "", 3, (0,), (0, 1, 2), 64, kl=sum(ci) / 2, kl_ci=ci)
        doc = {"schema_version": 1, "name": name, "default": {"weight": {"bits": 4 + len(name)}}}
        row = Ranked(1, strategy_id(doc), 0.0, True, "", 0, agg)
        return Evaluated(doc, 0.0, True, "ok", agg.kl, 4.0), row

    (a, ra), (b, rb), (c, rc) = member("a", (0.1, 0.2)), member("bb", (0.25, 0.4)), member("ccc", (0.15, 0.3))
    assert clear_winner([a, b], [ra, rb], 2)
    assert not clear_winner([a, b], [ra, rb], 3)  # population not full
    assert not clear_winner([a, c], [ra, rc], 2)  # overlapping intervals


def test_level_switch_moves_bits_between_units_within_budget(arena):
    facts = load_facts(arena.model)
    start = best_uniform(SearchSpace(facts, 4.5), "gptq")
    assert start.configs[0].weight.bits == 4 and start.configs[0].weight.group_size == 64
    space = SearchSpace(facts, layout_bits(start, facts))  # the start spends the whole budget
    rng = np.random.default_rng(0)
    for _ in range(20):
        switched = level_switch(start, space, rng)
        assert layout_bits(switched, facts) <= space.bits_budget
        changed = {config.weight.bits for config, before in zip(switched.configs, start.configs) if config != before}
        assert 5 in changed and max(changed - {5}) < 4  # one unit up, others down to pay for it
        for unit in units_of(space):  # a unit moves as a whole
            assert len({switched.configs[i] for i in unit}) == 1


# --- the command line, in separate processes -----------------------------------------------------------------


def agentqat(*args, cwd):
    return [sys.executable, "-m", "agentqat.cli", *args], {"cwd": cwd, "env": {**os.environ, "PYTHONUNBUFFERED": "1"}}


def run_cli(*args, cwd):
    command, options = agentqat(*args, cwd=cwd)
    return subprocess.run(command, capture_output=True, text=True, timeout=300, **options)


def test_sigkill_then_resume_ends_with_the_uninterrupted_leaderboard(arena_file, tmp_path):
    common = ("--arena", str(arena_file), "--generator", "evo", "--seed", "2", "--population", "4", "--generations", "4",
              "--no-clear-stop", "--patience", "9", "--workers", "0", "--runs", str(tmp_path))  # fmt: skip
    whole = run_cli("evolve", *common, "--run", "whole", cwd=tmp_path)
    assert whole.returncode == 0, whole.stderr
    command, options = agentqat("evolve", *common, "--run", "killed", cwd=tmp_path)
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **options)
    results = tmp_path / "killed" / "results.jsonl"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and process.poll() is None:
        if results.exists() and results.read_text().count("\n") >= 15:
            process.send_signal(signal.SIGKILL)
            break
        time.sleep(0.005)
    assert process.wait() == -signal.SIGKILL, "the run ended before it could be killed"
    cut = results.read_text().count("\n")
    resumed = run_cli("evolve", "--resume", str(tmp_path / "killed"), "--workers", "0", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    board = lambda name: [(r["strategy_id"], r["score"]) for r in json.loads((tmp_path / name / "summary.json").read_text())["leaderboard"]]
    assert board("killed") == board("whole")
    total = json.loads((tmp_path / "whole" / "summary.json").read_text())["matches"]
    assert resumed.stdout.count("  match ") == total - cut  # only the matches not recorded were played

    shown = run_cli("show", str(tmp_path / "killed"), cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert "generations" in shown.stdout and "Pareto front" in shown.stdout and "stage confirm: leaderboard" in shown.stdout


def test_cli_refuses_bad_evolve_input_with_exit_2(arena_file, tmp_path, capsys):
    from agentqat.cli import main

    common = ("evolve", "--arena", str(arena_file), "--workers", "0", "--runs", str(tmp_path))
    for args, message in [
        (("--population", "0"), "population must be at least 1"),
        (("--generator", "sa"), "unknown generator 'sa'"),
        (("--resume", str(tmp_path)), "not a run directory"),
    ]:
        assert main([*common, *args]) == 2
        assert message in capsys.readouterr().err, args
    assert main([*common, "--generations", "1", "--population", "2", "--run", "once"]) == 0
    assert main([*common, "--generations", "1", "--run", "once"]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["show", str(tmp_path / "nothing")]) == 2


def test_ctrl_c_stops_with_a_resume_hint(arena_file, tmp_path):
    command, options = agentqat("evolve", "--arena", str(arena_file), "--workers", "0", "--runs", str(tmp_path),
                                "--run", "stopped", "--generations", "30", "--patience", "30", "--no-clear-stop", cwd=tmp_path)  # fmt: skip
    # A shell starts background jobs with SIGINT ignored, and Python keeps an ignored SIGINT ignored: restore it.
    restore = lambda: signal.signal(signal.SIGINT, signal.SIG_DFL)  # noqa: E731
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, preexec_fn=restore, **options)
    results = tmp_path / "stopped" / "results.jsonl"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and not (results.exists() and results.read_text().count("\n") >= 3):
        time.sleep(0.01)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130
    assert f"agentqat evolve --resume {tmp_path / 'stopped'}" in stderr
    assert len(RunStore.open(tmp_path / "stopped").read("results")) >= 3


def test_proposals_stream_into_the_arena_as_the_generator_yields_them(arena, pool, tmp_path):
    """A generator offering iter_proposals (the LLM's way) has its first proposals played before its last."""
    events = []
    space = SearchSpace(load_facts(arena.model), arena.bits_budget)

    class Streaming:
        name = "streaming"

        def __init__(self):
            self.inner = make_generator("random", space)

        def iter_proposals(self, population, count, rng):
            for document in self.inner.propose(population, count, rng):
                events.append(("proposed", strategy_id(document)))
                yield document

        def propose(self, population, count, rng):
            return list(self.iter_proposals(population, count, rng))

        def tell(self, evaluated):
            pass

        def take_records(self):
            return []

    store = RunStore.create(tmp_path / "run", {"kind": "evolve"})
    settings = EvolveSettings(generator="random", population=3, generations=1)
    player = RecordedPlayer(pool.run, store, on_start=lambda worker, request: events.append(("played", strategy_id(request.document))))
    evolve(Streaming(), arena, player, settings, EvolveJournal(store))
    first_play = events.index(next(e for e in events if e[0] == "played"))
    last_proposal = max(i for i, e in enumerate(events) if e[0] == "proposed")
    assert first_play < last_proposal


def test_llm_generator_end_to_end_in_process(arena_file, tiny_llama_dir, tmp_path, capsys):
    """`evolve --generator llm` with Outlines over transformers in process (the tiny model proposes): the shared
    prior first, then proposals; every accepted proposal resolves and fits, rejections keep reasons. The per-layer
    probes are measured once into the cache (preparation, not in the run's results or budget)."""
    from agentqat.cli import main

    args = ["evolve", "--arena", str(arena_file), "--generator", "llm", "--llm-backend", "transformers",
            "--llm-model", str(tiny_llama_dir), "--workers", "0", "--generations", "2", "--population", "3",
            "--runs", str(tmp_path), "--run", "llm"]  # fmt: skip
    assert main(args) == 0, capsys.readouterr().err
    store = RunStore.open(tmp_path / "llm")
    assert store.manifest["llm"] == {"backend": "transformers", "model": str(tiny_llama_dir), "url": None,
                                     "fallback": False, "reflection": True, "sensitivities": True, "gpu_fraction": None}  # fmt: skip
    results = store.read("results")
    assert not [r for r in results if r["strategy_name"].startswith("probe-layer")]
    sensitivities = json.loads((tmp_path / "llm" / "sensitivities.json").read_text())
    assert len(sensitivities["values"]) == sensitivities["matches"] == 2  # one probe per decoder layer of the tiny model
    assert [p["generator"] for p in store.read("strategies") if p["generation"] == 0] == ["prior"] * len(store.manifest["prior"])
    space = SearchSpace(load_facts(store.manifest["arena"]["model"]), store.manifest["arena"]["bits_budget"])

    proposals = store.read("strategies")
    assert proposals and all(within(p["document"], space) for p in proposals)
    assert all(r["reason"] for r in store.read("rejections"))
    assert store.read("reflections")
    summary = json.loads((tmp_path / "llm" / "summary.json").read_text())
    assert summary["matches"] == len(results)  # the probes are preparation: not charged to the run


@pytest.mark.slow
def test_llm_generator_with_a_managed_vllm_server(arena_file, tmp_path, capsys):
    """`evolve --generator llm` starts a vLLM server on SmolLM2 itself, proposes through it, stops it."""
    pytest.importorskip("vllm")
    from agentqat.cli import main

    args = ["evolve", "--arena", str(arena_file), "--generator", "llm", "--generations", "2", "--population", "3",
            "--runs", str(tmp_path), "--run", "managed"]  # fmt: skip
    assert main(args) == 0, capsys.readouterr().err
    store = RunStore.open(tmp_path / "managed")
    assert store.manifest["llm"]["backend"] == "vllm" and store.manifest["llm"]["url"] is None
    space = SearchSpace(load_facts(store.manifest["arena"]["model"]), store.manifest["arena"]["bits_budget"])
    proposals = store.read("strategies")
    assert proposals and all(within(p["document"], space) for p in proposals)
    assert all(r["reason"] for r in store.read("rejections"))
    log = (tmp_path / "managed" / "llm-server.log").read_text()
    port = re.search(r"starting vLLM for smollm2-135m on port (\d+)", log).group(1)
    assert subprocess.run(["pgrep", "-f", "--", f"--port {port}"], capture_output=True).returncode == 1  # stopped


@pytest.mark.slow
def test_llm_generator_with_a_given_vllm_server(arena_file, smollm2_server, tmp_path, capsys):
    """`--llm-url` uses a running server (here the session's) and leaves it running."""
    from agentqat.cli import main

    args = ["evolve", "--arena", str(arena_file), "--generator", "llm", "--llm-url", smollm2_server.base_url,
            "--workers", "0", "--generations", "1", "--population", "3", "--runs", str(tmp_path), "--run", "given"]  # fmt: skip
    assert main(args) == 0, capsys.readouterr().err
    assert RunStore.open(tmp_path / "given").read("strategies")
    assert smollm2_server.running()


@pytest.mark.slow
def test_llm_generator_with_any_openai_compatible_server(arena_file, smollm2_server, tmp_path, capsys):
    """`--llm-backend openai`: the project's own vLLM server reached as any OpenAI-compatible endpoint would be
    (structured outputs through `response_format`, the model as the server names it), its constraint checked."""
    from agentqat.cli import main
    from agentqat.serving.backends import check_constrained, make_backend

    backend = make_backend("openai", smollm2_server.model_name, smollm2_server.base_url)
    assert backend.protocol == "openai" and backend.name.startswith("openai ")
    check_constrained(backend)  # raises when the server ignored the schema
    args = ["evolve", "--arena", str(arena_file), "--generator", "llm", "--llm-backend", "openai", "--llm-url", smollm2_server.base_url,
            "--llm-model", smollm2_server.model_name, "--workers", "0", "--generations", "1", "--population", "3", "--runs", str(tmp_path), "--run", "openai"]  # fmt: skip
    assert main(args) == 0, capsys.readouterr().err
    store = RunStore.open(tmp_path / "openai")
    assert store.read("strategies") and store.manifest["llm"]["backend"] == "openai"


def test_the_openai_backend_needs_a_url():
    from agentqat.errors import UserError
    from agentqat.serving.backends import make_backend

    with pytest.raises(UserError, match="needs the server's URL"):
        make_backend("openai", "some-model")


def test_the_time_budget_stops_the_run_before_a_generation(arena, pool, tmp_path):
    ticks = iter(range(0, 10_000, 100))  # every reading of the clock is 100 s later
    store = RunStore.create(tmp_path / "run", {"kind": "evolve"})
    settings = EvolveSettings(generator="random", population=2, generations=50, patience=50, time_budget_s=450, stop_when_clear=False)
    space = SearchSpace(load_facts(arena.model), arena.bits_budget)
    outcome = evolve(make_generator("random", space), arena, RecordedPlayer(pool.run, store), settings,
                     EvolveJournal(store), clock=lambda: next(ticks))  # fmt: skip
    assert outcome.stop_reason == "time budget of 450 s spent"
    assert 1 <= len(outcome.generations) < 5
