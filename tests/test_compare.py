"""`agentqat compare` on the tiny model: every arm at every seed with the same budget on one pool, the uniform
baselines, the winners re-scored on the test split, the report; a resumed comparison plays nothing again, or only
the confirmations on a full arena that it adds."""

import json
from pathlib import Path

import pytest

from agentqat.cli import main
from agentqat.errors import UserError
from agentqat.rundir.manifest import LlmSettings
from agentqat.session.compare import parse_arm, parse_seeds, read_settings
from agentqat.strategy.document import load_strategy, strategy_id
from agentqat.study.unseen import winners


@pytest.mark.parametrize(
    "text, seeds",
    [("0-4", (0, 1, 2, 3, 4)), ("3", (3,)), ("0,2,2,7", (0, 2, 7)), ("4-2", "error"), ("a-b", "error"), ("", "error")],
)
def test_seeds(text, seeds):
    if seeds == "error":
        with pytest.raises(UserError, match="0-4 or 0,1,5"):
            parse_seeds(text)
    else:
        assert parse_seeds(text) == seeds


def test_arms_name_their_ablations_and_proposers():
    base = LlmSettings(url="http://127.0.0.1:9/v1")
    plain = parse_arm("llm", base)
    ablated = parse_arm("llm/no-reflection/no-sensitivities", base)
    bigger = parse_arm("llm@gemma3-270m", base)
    assert (plain.name, plain.llm) == ("llm", base.model_copy(update={"reflection": True, "sensitivities": True}))
    assert ablated.name == "llm-no-reflection-no-sensitivities"
    assert not ablated.llm.reflection and not ablated.llm.sensitivities and ablated.llm.url == base.url
    assert (bigger.name, bigger.llm.model) == ("llm-gemma3-270m", "gemma3-270m")
    assert parse_arm("random", base).llm is None
    for bad in ("llm/no-prompts", "random/no-reflection", "evo@gemma3-270m", "nosuch"):
        with pytest.raises(UserError):
            parse_arm(bad, base)


@pytest.fixture(scope="module")
def tiny_arena(sensitive_llama_dir, small_corpus_file, tmp_path_factory):
    path = tmp_path_factory.mktemp("arena") / "tiny-compare.toml"
    path.write_text(
        f'name = "tiny-compare"\nmodel = "{sensitive_llama_dir}"\ncorpus = "{small_corpus_file}"\nwindow_tokens = 64\n'
        "calibration_windows = 4\nbits_budget = 4.6\n"
        '[[stages]]\nname = "screen"\nwindows = 2\npromote = 0.5\n[[stages]]\nname = "confirm"\nwindows = 2\nwindow_sets = 2\n'
    )
    return path


def _line_counts(directory):
    return {path.relative_to(directory): len(path.read_text().splitlines()) for path in sorted(directory.rglob("results.jsonl"))}


def _assert_within_budget(directory, settings):
    """Every run of every arm (the allocation arm included) played at most the comparison's matches and tokens, its
    preparation (the knapsack's unit probes) nowhere in it."""
    for run in sorted((directory / "runs").iterdir()):
        results = [json.loads(line) for line in (run / "results.jsonl").read_text().splitlines()]
        assert len(results) <= settings.match_budget, f"{run.name} overran its budget of {settings.match_budget} matches"
        tokens = sum(result["tokens"] for result in results)
        assert settings.token_budget is None or tokens <= settings.token_budget, f"{run.name} evaluated {tokens} tokens"
        assert not [r for r in results if r["strategy_name"].startswith("knapsack-probe")], f"{run.name} played preparation"
        summary = json.loads((run / "summary.json").read_text())
        assert (summary["matches"], summary["tokens"]) == (len(results), tokens), f"{run.name} was charged for something it did not play"


def test_compare_plays_every_arm_at_every_seed_then_reports_and_resumes(tiny_arena, tmp_path, capsys):
    args = ["compare", "--arena", str(tiny_arena), "--generators", "random,evo,knapsack", "--seeds", "0-1", "--budget", "10",
            "--tokens", "1200", "--population", "3", "--workers", "0", "--runs", str(tmp_path), "--run", "tiny"]  # fmt: skip
    assert main(args) == 0
    directory = tmp_path / "tiny"
    settings = read_settings(directory)
    assert [arm.name for arm in settings.arms] == ["random", "evo", "knapsack"] and settings.seeds == (0, 1)
    runs = sorted(path.name for path in (directory / "runs").iterdir())
    # the knapsack does not use the seed: its run at seed 1 would repeat seed 0's match for match
    assert runs == ["evo-seed0", "evo-seed1", "knapsack-seed0", "random-seed0", "random-seed1"]
    _assert_within_budget(directory, settings)
    # one preparation for all, recorded with its cost and charged to no arm: the knapsack's unit probes are in it,
    # not in its run, which plays its allocations from its first generation after the shared prior
    preparation = json.loads((directory / "preparation.json").read_text())
    items = {item["what"]: item for item in preparation["items"]}
    assert preparation["charged_to"] == "no arm" and set(items) == {"knapsack unit costs"}
    assert items["knapsack unit costs"]["asked_by"] == ["knapsack"] and items["knapsack unit costs"]["matches"] > 0
    assert items["knapsack unit costs"]["tokens"] == items["knapsack unit costs"]["matches"] * 2 * 64
    knapsack = directory / "runs" / "knapsack-seed0"
    assert json.loads((knapsack / "preparation.json").read_text())["charged"] is False
    proposed = [json.loads(line) for line in (knapsack / "strategies.jsonl").read_text().splitlines()]
    first = min(p["generation"] for p in proposed if p["generator"] != "prior")
    assert first == 1 and all(p["generator"] == "knapsack" for p in proposed if p["generation"] == 1)
    manifest = json.loads((knapsack / "manifest.json").read_text())
    assert manifest["preparation"] == "shared" and manifest["workers"] == 0 and manifest["versions"]["agentqat"]
    assert manifest["generator_settings"]["knapsack.UNITS"] == "layer" and manifest["prompt_template"] is None
    assert (directory / "baseline" / "results.jsonl").exists() and (directory / "test" / "results.jsonl").exists()
    # every run's rank-1 winner (a run whose every strategy failed has none) is a strategy file that re-scores as it is
    written = {path.stem: strategy_id(json.loads(path.read_text())) for path in (directory / "winners").glob("*.json")}
    assert written == {winner.run: winner.strategy_id for winner in winners(directory, top=1)} and "evo-seed0" in written
    assert all(load_strategy(directory / "winners" / f"{run}.json") for run in written)
    markdown = (directory / "report.md").read_text()
    assert "## Statistics" in markdown and "knapsack" in markdown
    assert "Preparation, measured once for the comparison" in markdown and "charged to no arm" in markdown
    # the knapsack's one run: a one-sample question said in words, or no result where it found nothing
    assert "One-sample: arm evo's 2 values against the single value" in markdown or "(knapsack never produced a value of it)" in markdown
    before = _line_counts(directory)

    assert main(["compare", "--resume", str(directory)]) == 0
    assert _line_counts(directory) == before  # nothing played again

    # a resume may add the arena the winners are confirmed on: it plays only those confirmations
    assert main(["compare", "--resume", str(directory), "--confirm-arena", str(tiny_arena), "--workers", "0"]) == 0
    assert read_settings(directory).confirm_arena.name == "tiny-compare"
    after = _line_counts(directory)
    assert {path: count for path, count in after.items() if path.parts[0] != "confirm"} == before
    assert after[Path("confirm/results.jsonl")] >= len(runs)
    assert "full-arena KL" in (directory / "report.md").read_text()

    # a resume may add arms, at some of the seeds: only their runs are played, on the recorded terms
    assert main(["compare", "--resume", str(directory), "--add-arms", "llm-random-edits", "--add-seeds", "1", "--workers", "0"]) == 0
    added = read_settings(directory).arms[-1]
    assert (added.name, added.seeds) == ("llm-random-edits", (1,))
    assert sorted(path.name for path in (directory / "runs").iterdir()) == sorted([*runs, "llm-random-edits-seed1"])
    assert {path: count for path, count in _line_counts(directory).items() if "llm-random-edits" not in str(path) and path.parts[0] == "runs"} == {
        path: count for path, count in after.items() if path.parts[0] == "runs"}  # fmt: skip
    assert "llm-random-edits" in (directory / "report.md").read_text()
    preparation = (directory / "runs" / "llm-random-edits-seed1" / "sensitivities.json").read_text()
    items = {item["what"]: item for item in json.loads((directory / "preparation.json").read_text())["items"]}
    assert items["sensitivity probes"]["asked_by"] == ["llm-random-edits"] and items["sensitivity probes"]["matches"] > 0
    assert json.loads(preparation)["values"] == items["sensitivity probes"]["cache"]["content"]["values"]  # what it was given
    manifest = json.loads((directory / "runs" / "llm-random-edits-seed1" / "manifest.json").read_text())
    assert manifest["prompt_template"] == "v2" and "generator.KIND_WEIGHTS" in manifest["generator_settings"]
    _assert_within_budget(directory, read_settings(directory))
    assert main(["compare", "--resume", str(directory)]) == 0
    assert (directory / "runs" / "llm-random-edits-seed1" / "sensitivities.json").read_text() == preparation  # kept as measured
    capsys.readouterr()
    assert main(["compare", "--resume", str(directory), "--add-arms", "evo"]) == 2
    assert main(["compare", "--resume", str(directory), "--add-arms", "llm", "--add-seeds", "7"]) == 2
    errors = capsys.readouterr().err
    assert "already has the arm(s) evo" in errors and "seeds [7] are not the comparison's (0, 1)" in errors


def test_the_knapsack_prior_is_measured_once_and_every_arm_starts_from_it(tiny_arena, tmp_path, capsys):
    args = ["compare", "--arena", str(tiny_arena), "--generators", "random,evo", "--seeds", "0", "--budget", "8",
            "--population", "2", "--workers", "0", "--prior", "uniform+knapsack", "--runs", str(tmp_path), "--run", "warm"]  # fmt: skip
    assert main(args) == 0
    directory = tmp_path / "warm"
    recorded = json.loads((directory / "prior.json").read_text())
    knapsack = [document for document in recorded["documents"] if document["name"].startswith("knapsack")]
    assert len(knapsack) == 1 and recorded["preparation"]["matches"] > 0  # the probes: preparation, charged to no run
    for run in ("random-seed0", "evo-seed0"):
        manifest = json.loads((directory / "runs" / run / "manifest.json").read_text())
        assert manifest["prior"] == recorded["documents"]
        played = {json.loads(line)["strategy_id"] for line in (directory / "runs" / run / "results.jsonl").read_text().splitlines()}
        assert strategy_id(knapsack[0]) in played, f"{run} did not play the shared knapsack start"
        assert len(played) <= 8
    assert "started from the shared prior uniform+knapsack" in (directory / "report.md").read_text()
    capsys.readouterr()
    assert main(["compare", "--resume", str(directory), "--prior", "uniform"]) == 2
    assert "prior is fixed when it starts" in capsys.readouterr().err

    # a comparison recorded before preparation was shared resumes as it was played: no preparation is made for it
    manifest = directory / "runs" / "random-seed0" / "manifest.json"
    manifest.write_text(json.dumps({key: value for key, value in json.loads(manifest.read_text()).items() if key != "preparation"}))
    (directory / "preparation.json").unlink()
    before = _line_counts(directory)
    assert main(["compare", "--resume", str(directory)]) == 0
    assert not (directory / "preparation.json").exists() and _line_counts(directory) == before
    assert "recorded before preparation was shared" in (directory / "report.md").read_text()


@pytest.mark.slow
def test_a_comparison_spreads_over_a_ray_cluster_started_apart(loopback_head, tiny_arena, tmp_path):
    """`--ray-address`: every run of the comparison plays on the evaluator actors of a head started with `ray start`."""
    import ray

    ray.shutdown()  # a local Ray an earlier test started
    args = ["compare", "--arena", str(tiny_arena), "--generators", "random,knapsack", "--seeds", "0-1", "--budget", "6",
            "--population", "3", "--workers", "1", "--ray-address", loopback_head, "--runs", str(tmp_path), "--run", "cluster"]  # fmt: skip
    try:
        assert main(args) == 0
    finally:
        ray.shutdown()
    directory = tmp_path / "cluster"
    assert sorted(path.name for path in (directory / "runs").iterdir()) == ["knapsack-seed0", "random-seed0", "random-seed1"]
    workers = {json.loads(line)["worker"] for line in (directory / "runs" / "random-seed1" / "results.jsonl").read_text().splitlines()}
    assert workers == {"worker-0"}
    assert (directory / "report.md").exists()
