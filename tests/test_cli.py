"""The command line: help, exit codes, one clear line for bad input, real runs on the tiny model."""

import json
import subprocess
import sys

import pytest

from agentqat.cli import build_parser, main

COMMANDS = ("info", "validate", "quantize", "baseline", "evolve", "show", "llm", "levels", "compare", "report",
           "sensitivity", "polish", "export", "engine-costs", "transfer", "plan", "engines", "engine-eval", "fold-awq")


def test_help_lists_every_command_with_a_line_each():
    text = build_parser().format_help()
    for command in COMMANDS:
        assert command in text
    choices = build_parser()._subparsers._group_actions[0].choices
    assert set(choices) == set(COMMANDS)


def test_console_script_help_runs():
    result = subprocess.run([sys.executable, "-m", "agentqat.cli", "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "quantize" in result.stdout


@pytest.fixture()
def strategies(tmp_path):
    files = {
        "good.json": '{"schema_version": 1, "default": {"weight": {"bits": 4, "group_size": 32}}}',
        "bad-group.json": '{"default": {"weight": {"bits": 4, "group_size": 96}}}',
        "truncated.json": '{"default": {"weight": ',
        "unknown-key.json": '{"default": {"weight": {"bitwidth": 4}}}',
    }
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    return tmp_path


def test_validate_exit_codes_and_messages(strategies, tiny_llama_dir, capsys):
    assert main(["validate", str(strategies / "good.json"), "--model", str(tiny_llama_dir)]) == 0
    assert "valid" in capsys.readouterr().out
    code = main(["validate", *(str(strategies / n) for n in ("good.json", "bad-group.json", "truncated.json", "unknown-key.json")), "--model", str(tiny_llama_dir)])
    out = capsys.readouterr().out
    assert code == 2
    assert "group_size 96 does not divide the input width 64" in out
    assert "truncated" in out
    assert "default.weight.bitwidth: unknown key" in out
    assert "Traceback" not in out


def test_user_errors_exit_2_with_one_line(tiny_llama_dir, capsys):
    assert main(["info", "--model", "/no/such/model"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["agentqat info: error: model path /no/such/model does not exist. check the path"]


def test_info_json_on_the_tiny_model(tiny_llama_dir, tmp_path, capsys):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(f"line {i} with some words to predict and a few more" for i in range(400)))
    assert main(["info", "--model", str(tiny_llama_dir), "--corpus", str(corpus), "--windows", "2", "--window-tokens", "64", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["model"]["layers"] == 2 and report["model"]["linear_modules"] == 14
    assert report["base_perplexity"]["value"] > 1


def test_quantize_json_on_the_tiny_model(sensitive_llama_dir, strategies, tmp_path, capsys):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(f"line {i} with some words to predict and a few more" for i in range(400)))
    gptq = strategies / "gptq.json"
    gptq.write_text('{"default": {"weight": {"bits": 4, "group_size": 32, "rounding": "gptq"}}}')
    args = ["--model", str(sensitive_llama_dir), "--corpus", str(corpus), "--windows", "2", "--window-tokens", "64", "--calibration-windows", "2", "--json"]
    assert main(["quantize", "--strategy", str(gptq), *args]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["bits_per_weight"] == pytest.approx(4 + 20 / 32)
    assert report["quantized"]["kl"] > 0.01 and report["quantized"]["finite"]
    assert report["quantized"]["top1_agreement"] < 1.0
