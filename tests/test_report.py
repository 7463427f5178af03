"""A tiny comparison on the tiny model (random and evo, 3 seeds each, a baseline run, winners re-evaluated on
the test split and on a text file, and confirmed with the shared prior on a fuller arena), its report rendered by
`agentqat report DIR`."""

import json

import pytest

from agentqat.arena.baselines import baseline_requests
from agentqat.arena.config import Stage, load_arena
from agentqat.arena.match import Workbench
from agentqat.cli import main
from agentqat.report.records import read_comparison
from agentqat.session import evolve_manifest, run_baseline, run_evolve
from agentqat.study.confirm import PRIOR_RUN, confirm_winners, pooled_arena
from agentqat.study.unseen import UnseenBench, reevaluate, test_scores

ARMS, SEEDS = ("random", "evo"), (0, 1, 2)


@pytest.fixture(scope="module")
def arena(sensitive_llama_dir, small_corpus_file, tmp_path_factory):
    path = tmp_path_factory.mktemp("arena") / "tiny-study.toml"
    path.write_text(
        f'name = "tiny-study"\nmodel = "{sensitive_llama_dir}"\ncorpus = "{small_corpus_file}"\nwindow_tokens = 64\n'
        "calibration_windows = 4\nbits_budget = 4.6\n"
        '[[stages]]\nname = "screen"\nwindows = 2\npromote = 0.7\n[[stages]]\nname = "confirm"\nwindows = 2\nwindow_sets = 2\n'
    )
    return load_arena(str(path))


@pytest.fixture(scope="module")
def comparison(arena, small_corpus_file, tmp_path_factory):
    directory = tmp_path_factory.mktemp("compare") / "tiny"
    for arm in ARMS:
        for seed in SEEDS:
            manifest = evolve_manifest(arena, generator=arm, seed=seed, population=3, generations=2, stop_when_clear=False)
            run_evolve(directory / "runs" / f"{arm}-seed{seed}", manifest, workers=0)
    requests = baseline_requests("confirm", arena.seed, bits=(3, 4), methods=("rtn", "gptq"))
    run_baseline(directory / "baseline", arena, requests, "confirm", arena.seed, workers=0)
    unseen = tmp_path_factory.mktemp("unseen") / "other.txt"
    unseen.write_text(small_corpus_file.read_text().splitlines()[0] * 3 + "\n")
    reevaluate(directory, sources=("test", str(unseen)), windows=4)
    confirm_winners(directory, full_arena(arena))
    return directory


def full_arena(arena):
    """The tiny arena with a larger last stage: 2 sets of 3 windows."""
    return arena.model_copy(update={"name": "tiny-full", "stages": (arena.stages[0], Stage(name="confirm", windows=3, window_sets=2))})


def test_test_scores_use_unseen_windows_and_record_a_test_stage(arena):
    bench = UnseenBench(arena, "test", windows=3)
    document = {"schema_version": 1, "name": "w8", "default": {"weight": {"bits": 8}}}
    result = test_scores(document, arena, bench=bench)
    assert result.outcome == "ok" and result.stage == "test" and result.tokens == 3 * 64
    assert result.quality.kl < 0.05 and result.quality.top1 > 0.9
    searched = {tuple(w.tolist()) for w in bench.eval_ids.unfold(0, 64, 64)}
    assert not searched & {tuple(w.tolist()) for w in bench.windows(bench.stage, arena.seed, 0)}


def test_reevaluation_records_every_winner_once_per_source(comparison):
    records = read_comparison(comparison)
    assert len(records.runs) == len(ARMS) * len(SEEDS) and records.baseline is not None
    stages = sorted({result.stage for result in records.tests})
    assert stages == ["test", "test:other.txt"]
    assert len(records.tests) == 2 * len(ARMS) * len(SEEDS)
    assert reevaluate(comparison, sources=("test",), windows=4) == list(records.tests)  # nothing played again


def test_winners_and_the_prior_are_confirmed_once_on_the_full_arenas_pooled_windows(comparison, arena):
    records = read_comparison(comparison)
    prior = json.loads((comparison / "runs" / "evo-seed0" / "manifest.json").read_text())["prior"]
    winners = [r for r in records.confirms if r.extra["run"] != PRIOR_RUN]
    assert len(winners) == len(ARMS) * len(SEEDS) and all(r.extra["rank"] == 1 for r in winners)
    assert len(records.confirms) - len(winners) == len(prior) >= 1
    assert all(r.outcome == "ok" and r.stage == "confirm:tiny-full" and r.tokens == 6 * 64 for r in records.confirms)
    assert confirm_winners(comparison, full_arena(arena)) == list(records.confirms)  # nothing played again
    full = full_arena(arena)
    sets, pooled = Workbench(full), Workbench(pooled_arena(full))
    union = {tuple(w.tolist()) for k in range(2) for w in sets.windows(full.stages[-1], full.seed, k)}
    assert union == {tuple(w.tolist()) for w in pooled.windows(pooled.arena.stages[-1], full.seed, 0)}


def test_report_renders_from_the_records(comparison, capsys):
    assert main(["report", str(comparison)]) == 0
    markdown = (comparison / "report.md").read_text()
    for section in ("## Statistics", "## Best so far", "## Pareto fronts", "## Winners' bit maps", "## Failure taxonomy",
                    "## Search score against test score", "## Survival patterns"):  # fmt: skip
        assert section in markdown
    assert "evo vs random" in markdown and "Mann-Whitney" in markdown
    assert "full-arena perplexity" in markdown and "the shared prior every arm started from" in markdown
    # every unseen text its own columns, arm means and single winners labelled, exact tests with their floor and Holm
    assert "| test KL | test perplexity | other.txt KL | other.txt perplexity | full-arena KL |" in markdown
    assert "| evo | arm mean over 3 seeds |" in markdown and "| evo | best single winner |" in markdown
    assert "exact Mann-Whitney" in markdown and "smallest attainable p" in markdown and "Holm-adjusted p" in markdown
    assert "other.txt KL" in markdown.split("## Best so far")[0].split("Tests:")[1]  # and tested
    assert "do not differ significantly" in markdown or "significantly" in markdown
    page = (comparison / "report.html").read_text()
    assert page.count("data:image/png;base64,") >= 5 and "src='figures/" not in page
    pngs = sorted(path.name for path in (comparison / "figures").glob("*.png"))
    assert {"best_so_far.png", "pareto.png", "bit_maps.png", "failures.png", "search_vs_test.png"} <= set(pngs)
    assert json.dumps(markdown)  # plain text


def test_the_report_says_what_preparation_cost_and_which_hypotheses_held(comparison, capsys):
    """Preparation recorded in DIR/preparation.json is reported as charged to no arm; PLAN.md's hypotheses are tested
    (Holm over the plan's family) and the report says which held, and whether the plan is the registered one."""
    from agentqat.report.analysis import summarize
    from agentqat.rundir.paths import PLAN_FILE, REGISTERED_FILE
    from agentqat.study.plan import evaluate, parse_plan, register
    from agentqat.study.stats import compare_arms, holm

    plan = ("```hypotheses\nalpha: 0.05\nH1: arm evo < arm random on final_kl\nH2: arm evo != arm random on test_kl\n"
            "H3: arm llm < arm random on final_kl\n```\n")  # fmt: skip
    preparation = {"charged_to": "no arm", "matches": 12, "tokens": 1536, "items": [
        {"what": "knapsack unit costs", "asked_by": ["knapsack"], "matches": 12, "tokens": 1536, "detail": "probes"}]}  # fmt: skip
    try:
        (comparison / PLAN_FILE).write_text(plan)
        register(comparison)
        (comparison / "preparation.json").write_text(json.dumps(preparation))
        assert main(["report", str(comparison)]) == 0
        markdown = (comparison / "report.md").read_text()
        assert "## Preparation" in markdown and "knapsack unit costs: 12 matches (1,536 evaluated tokens)" in markdown
        assert "charged to no arm" in markdown and "In all: 12 matches" in markdown
        section = markdown.split("## Pre-registration")[1].split("## Statistics")[0]
        assert "PLAN.md is the one recorded when the comparison started" in section
        records = read_comparison(comparison)
        outcomes = evaluate(parse_plan(plan), records, summarize(records))
        by_arm = {s.arm: s for s in summarize(records)}
        tests = [compare_arms("evo", by_arm["evo"].values[q], "random", by_arm["random"].values[q], q) for q in ("final KL", "test KL")]
        assert [o.p_holm for o in outcomes[:2]] == pytest.approx(holm([t.p_two_sided for t in tests]))  # the plan's family of 2
        assert outcomes[2].verdict == "no result" and "no arm llm" in outcomes[2].why
        for outcome in outcomes[:2]:
            assert outcome.verdict in ("held", "not held") and f"| {outcome.hypothesis.text()} |" in section
            assert outcome.verdict == ("held" if outcome.p_holm < 0.05 and (outcome.hypothesis.direction == "!=" or outcome.test.cliffs_delta < 0) else "not held")
        (comparison / PLAN_FILE).write_text(plan.replace("<", ">"))
        assert main(["report", str(comparison)]) == 0
        assert "PLAN.md has changed since the comparison started" in (comparison / "report.md").read_text()
    finally:
        for name in (PLAN_FILE, REGISTERED_FILE, "preparation.json"):
            (comparison / name).unlink(missing_ok=True)


def test_the_pareto_zoom_holds_the_budgets_neighbourhood_and_bit_maps_name_group_sizes_and_gguf_types():
    from agentqat.models import LinearInfo
    from agentqat.quant.base import ActivationQuant, OutlierPolicy, WeightQuant
    from agentqat.report.figures import _gene_label, zoom_window
    from agentqat.strategy.resolve import ModuleConfig

    points = [(3.0, 1.4), (3.25, 0.60), (3.28, 0.56), (3.30, 0.55), (3.5, 0.3)]  # the last: over the budget
    (low, high), (bottom, top) = zoom_window(points, 3.3, reference=0.57)
    assert low < 3.25 and 3.30 <= high < 3.35 and bottom < 0.55 and 0.61 < top < 0.62  # 12% above the best within budget
    assert zoom_window([(4.0, 0.1)], 3.3, None) is None

    def label(weight, in_features=576):
        info = LinearInfo(name="model.layers.0.mlp.down_proj", layer=0, in_features=in_features, out_features=64)
        return _gene_label(ModuleConfig(weight, ActivationQuant(), OutlierPolicy()), info)

    assert label(WeightQuant(3, 64)) == "g64" and label(WeightQuant(4, 0)) == "per-channel" and label(WeightQuant(16)) == "16-bit"
    assert label(WeightQuant(4, 32, format="gguf_q4_k", rounding="imatrix"), 1536) == "Q4_K"
    assert label(WeightQuant(4, 32, format="gguf_q4_k", rounding="imatrix"), 576) == "Q4_K as Q5_0"  # llama.cpp's fallback there


def test_llama_cpps_measurement_of_the_winners_has_its_own_columns_tests_and_stock_file(comparison, tmp_path):
    """DIR/engine.jsonl (bench/gguf_winners.py) adds per text llama.cpp's KL and perplexity of every run's winner,
    tested like every other quantity, with the stock file they are held against and whether the engine orders the
    arms as the search did."""
    import shutil

    from agentqat.report.analysis import summarize
    from agentqat.report.engine_section import order_sentence

    directory = tmp_path / "tiny"
    shutil.copytree(comparison, directory)
    lines = []
    for k, run in enumerate(sorted(path.name for path in (directory / "runs").iterdir())):
        for text, kl in (("test", 0.05 + 0.01 * k), ("reports/unseen/gpl-3.txt", 0.07 + 0.01 * k)):
            figures = {"mean_kl": kl, "perplexity": 30 + k, "same_top": 0.9, "base_perplexity": 29.0, "chunks": 16, "context": 512}
            lines.append({"run": run, "text": text, "file_bytes": 1000 + k, "kl": figures})
    for text in ("test", "reports/unseen/gpl-3.txt"):
        figures = {"mean_kl": 0.1, "perplexity": 33.0, "same_top": 0.85, "base_perplexity": 29.0, "chunks": 16, "context": 512}
        lines.append({"stock": "IQ4_NL", "imatrix": True, "text": text, "file_bytes": 1200, "kl": figures})
    (directory / "engine.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    assert main(["report", str(directory)]) == 0
    markdown = (directory / "report.md").read_text()
    assert "| arm | row | engine test KL | engine test perplexity | engine gpl-3.txt KL | engine gpl-3.txt perplexity |" in markdown
    assert "llama.cpp's stock IQ4_NL + imatrix file, 1,200 bytes, made by llama-quantize alone (test: KL 0.1" in markdown
    assert "on 16 chunks of 512 tokens of each text" in markdown
    tests = markdown.split("Tests:")[1]
    assert "| evo vs random | engine test KL |" in tests and "| evo vs random | engine gpl-3.txt perplexity |" in tests
    records = read_comparison(directory)
    by_arm = {s.arm: s for s in summarize(records)}
    evo = sorted(path.name for path in (directory / "runs").iterdir()).index("evo-seed0")
    assert by_arm["evo"].values["engine test KL"][0] == pytest.approx(0.05 + 0.01 * evo)
    sentence = order_sentence(summarize(records))
    assert sentence in markdown and "Spearman's rank correlation of the two over the 6 runs" in sentence
    assert read_comparison(comparison).engine == ()  # nothing of it leaks into the fixture's own report
