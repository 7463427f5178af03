"""Pre-registration (agentqat.study.plan): PLAN.md's hypotheses block, the template `agentqat compare --write-plan`
writes, a new comparison under reports/ refused without a plan, and the committed plan of the GGUF study."""

import json
from pathlib import Path

import pytest

from agentqat.cli import main
from agentqat.rundir.manifest import LlmSettings
from agentqat.rundir.paths import PLAN_FILE
from agentqat.session.compare import parse_arm
from agentqat.study.plan import Hypothesis, PlanError, parse_plan, plan_template, quantity_key, registered_hash, sha256

ROOT = Path(__file__).resolve().parents[1]


def test_quantities_are_named_as_the_report_names_them():
    assert [quantity_key(q) for q in ("final KL", "KL AUC (tokens)", "gpl-3.txt KL", "full-arena perplexity")] == [
        "final_kl", "kl_auc_tokens", "gpl_3_txt_kl", "full_arena_perplexity"]  # fmt: skip


def test_the_hypotheses_block_parses_and_names_its_lines():
    text = "# Plan\n\nprose H9: arm x < arm y on z\n\n```hypotheses\nalpha: 0.01  # stricter\n\nH1: arm llm < arm random on final_kl\nH2b: arm evo != arm llm-no-reflection on test_kl\n```\n"
    plan = parse_plan(text)
    assert plan.alpha == 0.01
    assert plan.hypotheses == (Hypothesis("H1", "llm", "<", "random", "final_kl"), Hypothesis("H2b", "evo", "!=", "llm-no-reflection", "test_kl"))
    assert parse_plan("# Plan without a block\n") is None
    for bad in ("H1: llm < random on final_kl", "alpha: 2", "H1: arm a < arm b on final_kl\nH1: arm a > arm b on final_kl"):
        with pytest.raises(PlanError):
            parse_plan(f"```hypotheses\n{bad}\n```\n")


def test_write_plan_writes_a_template_whose_block_parses_and_never_overwrites(tmp_path, capsys):
    args = ["compare", "--generators", "llm,llm/no-reflection,random", "--seeds", "0-4", "--tokens", "5000", "--write-plan", str(tmp_path / "study")]
    assert main(args) == 0
    text = (tmp_path / "study" / PLAN_FILE).read_text()
    plan = parse_plan(text)
    assert [(h.a, h.b, h.quantity) for h in plan.hypotheses] == [("llm", "llm-no-reflection", "final_kl"), ("llm", "random", "final_kl")]
    assert "5,000 evaluated tokens" in text and "Seeds: 0-4" in text
    assert main(args) == 2
    assert "a plan is not overwritten" in capsys.readouterr().err


def test_a_new_comparison_under_reports_needs_its_plan(tmp_path, capsys):
    reports = tmp_path / "reports"
    assert main(["compare", "--generators", "random", "--seeds", "0", "--runs", str(reports), "--run", "study"]) == 2
    error = capsys.readouterr().err
    assert "pre-registered first" in error and "--write-plan" in error and not (reports / "study").exists()


def test_the_gguf_study_plan_names_its_arms_and_one_primary_quantity():
    text = (ROOT / "reports" / "compare-gguf" / PLAN_FILE).read_text()
    plan = parse_plan(text)
    arms = {parse_arm(spec, LlmSettings()).name for spec in ("llm", "llm-random-edits", "llm/no-reflection", "evo", "random", "knapsack")}
    assert plan.alpha == 0.05 and len(plan.hypotheses) == 4
    assert {h.a for h in plan.hypotheses} == {"llm"} and {h.b for h in plan.hypotheses} | {"llm", "knapsack"} == arms
    assert {(h.direction, h.quantity) for h in plan.hypotheses} == {("<", "final_kl")}
    assert "--seeds 0-4" in text and "smollm2-gguf" in text and "Holm" in text
    directory = ROOT / "reports" / "compare-gguf"  # started under this plan, its amendment made before any run
    settings = json.loads((directory / "compare.json").read_text())
    assert registered_hash(directory) == sha256(text) and "`--tokens 48128`" in text
    assert settings["token_budget"] == 48128 and settings["seeds"] == [0, 1, 2, 3, 4] and settings["population"] == 16
    registered, added = settings["arms"][:6], settings["arms"][6:]
    assert [arm["name"] for arm in registered] == ["llm", "llm-random-edits", "llm-no-reflection", "evo", "random", "knapsack"]
    assert [arm["name"] for arm in added] == ["llm-gemma3-270m"] and "`llm@gemma3-270m`, 5 seeds) if added with" in text  # exploratory
    assert plan_template("a", ["x", "y"], "0-4", "9 matches").count("H1: arm x < arm y on final_kl") == 1
