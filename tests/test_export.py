"""Exports on the tiny real Llama: compressed-tensors codes that decompress to exactly the arena's weights,
fake-quant checkpoints that transformers loads with the arena's logits, clear errors for what a format cannot
hold, the metadata file, and effective bits that agree with the bytes written.

Bits against bytes (measured here): the tensors written carry exactly the bytes that `agentqat.strategy.bits` counts for
int-grid strategies with fp16 scales (codes, scales, zero points, 16-bit rest); the files add the safetensors
header and compressed-tensors' `weight_shape` (two int64 per packed module). On the tiny model that is +2.6%
(BYTES_TOLERANCE allows 5%); on SmolLM2-135M it is +0.03% (tests/test_export_vllm.py).
"""

from __future__ import annotations

import json
import re

import pytest
import torch
from safetensors import safe_open

from agentqat.arena.config import Arena, Stage
from agentqat.cli import main
from agentqat.export import EXPORTERS, ExportError, export, prepare_source
from agentqat.export.base import METADATA_FILE

BYTES_TOLERANCE = 0.05  # files over counted bytes on the tiny model: header and weight_shape (measured +2.6%)
W4_SYM = {"bits": 4, "group_size": 32, "symmetric": True}
MIXED = {
    "schema_version": 1, "name": "mixed",
    "default": {"weight": W4_SYM},
    "rules": [
        {"layers": "1", "modules": ["attn"], "weight": {"bits": 8, "group_size": 0, "symmetric": True}, "activation": {"bits": 8}},
        {"layers": "1", "modules": ["mlp"], "weight": {"bits": 4, "group_size": 32, "symmetric": False, "rounding": "gptq", "clip": "mse"}},
        {"layers": "0", "modules": ["mlp.down_proj"], "weight": {"bits": 16}},
    ],
}  # fmt: skip


def strategy(*rules: dict, default: dict = W4_SYM) -> dict:
    return {"schema_version": 1, "name": "case", "default": {"weight": default}, "rules": list(rules)}


@pytest.fixture(scope="module")
def arena(sensitive_llama_dir, small_corpus_file):
    return Arena(
        name="tiny-export", model=str(sensitive_llama_dir), corpus=str(small_corpus_file), window_tokens=64,
        calibration_windows=4, stages=(Stage(name="screen", windows=2),),
    )  # fmt: skip


@pytest.fixture(scope="module")
def mixed_export(arena, tmp_path_factory):
    source = prepare_source(MIXED, arena, figures={"perplexity": 1.0})
    return source, export(source, "compressed-tensors", tmp_path_factory.mktemp("ct") / "out")


def _tensors(path) -> dict[str, torch.Tensor]:
    with safe_open(str(path / "model.safetensors"), "pt") as file:
        return {key: file.get_tensor(key) for key in file.keys()}


def _scheme(config: dict, name: str):
    from compressed_tensors.quantization import QuantizationScheme

    for group in config["config_groups"].values():
        if any(re.match(target.removeprefix("re:"), name) for target in group["targets"]):
            return QuantizationScheme.model_validate(group)
    return None


def test_compressed_tensors_codes_decompress_to_exactly_the_arenas_weights(mixed_export):
    from compressed_tensors.compressors import BaseCompressor

    source, out = mixed_export
    config = json.loads((out / "config.json").read_text())["quantization_config"]
    assert config["format"] == "mixed-precision"
    assert {g["format"] for g in config["config_groups"].values()} == {"pack-quantized", "int-quantized"}
    assert "model.layers.0.mlp.down_proj" in config["ignore"]
    tensors = _tensors(out)
    checked = 0
    for name, module in source.modules.items():
        scheme = _scheme(config, name)
        if scheme is None:
            assert module.config.weight.bits == 16 and f"{name}.weight" in tensors
            continue
        state = {key.removeprefix(f"{name}."): value for key, value in tensors.items() if key.startswith(f"{name}.")}
        assert state["weight_scale"].dtype == torch.float16
        state["weight_scale"] = state["weight_scale"].to(torch.float32)  # the stored fp16 scales, taken exactly
        weight = BaseCompressor.get_value_from_registry(scheme.format).decompress(state, scheme)["weight"]
        assert torch.equal(weight, module.quantized), name
        assert not torch.equal(weight, module.original)
        checked += 1
    assert checked == 13


FP8_MLP = strategy({"layers": "0-1", "modules": ["mlp"], "weight": {"bits": 8, "format": "fp8_e4m3", "group_size": 0, "clip": "mse"},
                    "activation": {"bits": 8, "format": "fp8_e4m3", "granularity": "per_token"}})  # fmt: skip


def test_fp8_weights_per_channel_are_stored_as_float8_values_that_decompress_exactly(arena, tmp_path):
    from compressed_tensors.compressors import BaseCompressor

    source = prepare_source(FP8_MLP, arena)
    out = export(source, "compressed-tensors", tmp_path / "out")
    config = json.loads((out / "config.json").read_text())["quantization_config"]
    tensors = _tensors(out)
    name = "model.layers.1.mlp.gate_proj"
    scheme = _scheme(config, name)
    assert (scheme.weights.type, scheme.weights.strategy, scheme.input_activations.type) == ("float", "channel", "float")
    assert scheme.format == "float-quantized" and tensors[f"{name}.weight"].dtype == torch.float8_e4m3fn
    for module in (m for m in source.modules.values() if m.config.weight.format == "fp8_e4m3"):
        state = {key.removeprefix(f"{module.name}."): value for key, value in tensors.items() if key.startswith(f"{module.name}.")}
        state["weight_scale"] = state["weight_scale"].to(torch.float32)
        weight = BaseCompressor.get_value_from_registry(scheme.format).decompress(state, scheme)["weight"]
        assert torch.equal(weight.to(torch.float32), module.quantized), module.name


def test_the_export_records_strategy_figures_effective_bits_and_bytes_that_match_the_count(mixed_export, arena):
    from agentqat.models import load_facts
    from agentqat.strategy.bits import strategy_bits
    from agentqat.strategy.document import parse_strategy
    from agentqat.strategy.resolve import resolve_strategy

    source, out = mixed_export
    metadata = json.loads((out / METADATA_FILE).read_text())
    assert metadata["strategy"] == MIXED and metadata["figures"] == {"perplexity": 1.0}
    assert metadata["format"] == "compressed-tensors"
    assert metadata["effective_bits"] == pytest.approx(source.effective_bits)
    assert metadata["weight_bytes"] == (out / "model.safetensors").stat().st_size
    facts = load_facts(arena.model)
    counted = strategy_bits(resolve_strategy(parse_strategy(MIXED), facts), facts).model_bytes
    payload = sum(t.numel() * t.element_size() for key, t in _tensors(out).items() if not key.endswith("weight_shape"))
    assert abs(payload - counted) <= 1  # the count floors bits to bytes
    assert 0 < metadata["weight_bytes"] / counted - 1 < BYTES_TOLERANCE


def _arena_logits(arena: Arena, document: dict, windows: torch.Tensor) -> torch.Tensor:
    """Returns the logits the arena computes for `document` on `windows` (its Workbench, calibration, modules)."""
    from agentqat.arena.match import Workbench
    from agentqat.strategy.apply import strategy_applied
    from agentqat.strategy.document import parse_strategy
    from agentqat.strategy.resolve import needs_calibration, resolve_strategy

    bench = Workbench(arena)
    resolved = resolve_strategy(parse_strategy(document), bench.loaded.facts)
    calibration = bench.calibration(arena.calibration_windows) if needs_calibration(resolved) else None
    with strategy_applied(bench.loaded.model, resolved, calibration), torch.no_grad():
        return bench.loaded.model(windows).logits


@pytest.mark.parametrize("document", [
    MIXED | {"rules": MIXED["rules"][1:]},
    strategy({"layers": "all", "modules": ["all"], "activation": {"smooth_alpha": 0.5}, "outliers": {"method": "keep_fp16", "fraction": 0.01}},
             default={"bits": 3, "group_size": 32, "rounding": "awq"}),
], ids=["int-grids", "awq-smoothing-outliers"])  # fmt: skip
def test_fake_quant_loads_in_transformers_and_computes_the_arenas_logits(arena, document, tmp_path):
    from transformers import AutoModelForCausalLM

    out = export(prepare_source(document, arena), "fake-quant", tmp_path / "out")
    windows = torch.randint(0, 500, (2, 64), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()(windows).logits
    expected = _arena_logits(arena, document, windows)
    smoothed = any(rule.get("activation", {}).get("smooth_alpha") for rule in document["rules"])
    if smoothed:  # (x / s) W^T against x (W / s)^T: equal up to float32 rounding
        torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-4)
    else:
        assert torch.equal(logits, expected)
    assert json.loads((out / METADATA_FILE).read_text())["weight_bytes"] > 0


QKV_SPLIT = strategy({"layers": "0", "modules": ["self_attn.k_proj"], "weight": {"bits": 8, "group_size": 0}})
CASES = [  # format, strategy, modules named, words in the reason
    ("compressed-tensors", strategy({"layers": "1", "modules": ["mlp"], "weight": {"format": "nf4", "group_size": 64, "symmetric": True}}),
     {"model.layers.1.mlp.gate_proj", "model.layers.1.mlp.up_proj", "model.layers.1.mlp.down_proj"}, "format nf4 is not an integer grid"),
    ("compressed-tensors", strategy({"layers": "0", "modules": ["o_proj"], "weight": {"rounding": "awq"}}),
     {"model.layers.0.self_attn.o_proj"}, "awq values are not scale x integer codes"),
    ("compressed-tensors", strategy({"layers": "0", "modules": ["o_proj"], "weight": {"rounding": "hqq", "symmetric": False}}),
     {"model.layers.0.self_attn.o_proj"}, "hqq values are not scale x integer codes"),
    ("compressed-tensors", QKV_SPLIT, {f"model.layers.0.self_attn.{p}_proj" for p in "qkv"}, "schemes differ"),
    ("compressed-tensors", strategy({"layers": "1", "modules": ["down_proj"], "outliers": {"method": "keep_fp16", "fraction": 0.01}}),
     {"model.layers.1.mlp.down_proj"}, "outlier weights in fp16"),
    ("compressed-tensors", strategy({"layers": "1", "modules": ["down_proj"], "activation": {"bits": 8, "smooth_alpha": 0.5}}),
     {"model.layers.1.mlp.down_proj"}, "SmoothQuant divisors"),
    ("compressed-tensors", strategy({"layers": "1", "modules": ["attn"], "weight": {"bits": 8, "format": "fp8_e4m3", "group_size": 32}}),
     {f"model.layers.1.self_attn.{p}_proj" for p in "qkvo"}, "fp8 weights have groups"),
    ("compressed-tensors", strategy({"layers": "1", "modules": ["attn"], "weight": {"bits": 8, "format": "fp8_e4m3", "group_size": 0}, "activation": {"bits": 8}}),
     {f"model.layers.1.self_attn.{p}_proj" for p in "qkvo"}, "with int8 activations"),
    ("fake-quant", strategy({"layers": "1", "modules": ["mlp"], "activation": {"bits": 8}}),
     {"model.layers.1.mlp.gate_proj", "model.layers.1.mlp.up_proj", "model.layers.1.mlp.down_proj"}, "quantized their input activations"),
]  # fmt: skip


@pytest.mark.parametrize(("format", "document", "modules", "reason"), CASES, ids=lambda v: v if isinstance(v, str) and " " not in v else None)
def test_what_a_format_cannot_hold_is_an_error_naming_the_modules(arena, format, document, modules, reason, tmp_path):
    source = prepare_source(document, arena)
    with pytest.raises(ExportError) as error:
        export(source, format, tmp_path / "out")
    assert set(error.value.modules) == modules
    assert reason in str(error.value) and str(len(modules)) in str(error.value)
    assert not (tmp_path / "out" / "model.safetensors").exists()


def test_cli_exports_a_strategy_file_and_refuses_an_unknown_format(arena, tmp_path, capsys):
    arena_file = tmp_path / "arena.toml"
    arena_file.write_text(
        f'name = "tiny-export"\nmodel = "{arena.model}"\ncorpus = "{arena.corpus}"\nwindow_tokens = 64\n'
        'calibration_windows = 4\n[[stages]]\nname = "screen"\nwindows = 2\n'
    )
    strategy_file = tmp_path / "s.json"
    strategy_file.write_text(json.dumps(MIXED))
    common = ["--strategy", str(strategy_file), "--arena", str(arena_file)]
    assert main(["export", *common, "--format", "compressed-tensors", "--out", str(tmp_path / "ct")]) == 0
    assert json.loads((tmp_path / "ct" / METADATA_FILE).read_text())["strategy"]["name"] == "mixed"
    capsys.readouterr()
    assert "nosuch" not in EXPORTERS
    assert main(["export", *common, "--format", "nosuch", "--out", str(tmp_path / "x")]) == 2
    assert "no exporter for format 'nosuch'" in capsys.readouterr().err
    assert main(["export", *common, "--best", "--format", "fake-quant", "--out", str(tmp_path / "y")]) == 2


def test_an_export_for_vllm_cpu_says_when_this_cpu_cannot_serve_its_w4a16_modules(arena, tmp_path, capsys, monkeypatch):
    from agentqat.strategy import deploy

    arena_file = tmp_path / "arena.toml"
    arena_file.write_text(
        f'name = "tiny-export"\nmodel = "{arena.model}"\ncorpus = "{arena.corpus}"\nwindow_tokens = 64\n'
        'calibration_windows = 4\n[[stages]]\nname = "screen"\nwindows = 2\n'
    )
    strategy_file = tmp_path / "s.json"
    strategy_file.write_text(json.dumps(strategy()))
    common = ["export", "--strategy", str(strategy_file), "--arena", str(arena_file), "--format", "compressed-tensors", "--deploy", "vllm-cpu"]
    monkeypatch.setattr(deploy, "cpu_has_avx512", lambda: False)
    monkeypatch.setattr(deploy.platform, "machine", lambda: "x86_64")
    assert main([*common, "--out", str(tmp_path / "avx2")]) == 0
    assert "note: this machine cannot serve its W4A16 modules" in capsys.readouterr().out
    monkeypatch.setattr(deploy, "cpu_has_avx512", lambda: True)
    assert main([*common, "--out", str(tmp_path / "avx512")]) == 0
    assert "note:" not in capsys.readouterr().out


VLLM_CPU_CASES = [  # strategy, modules refused by vLLM on CPU (None: it runs all), words in the reason
    (strategy({"layers": "1", "modules": ["all"], "weight": {"bits": 8, "group_size": 0}, "activation": {"bits": 8}}), None, ""),
    (MIXED, {f"model.layers.1.mlp.{p}_proj" for p in ("gate", "up", "down")}, "is none of vLLM on CPU's schemes"),
    (strategy({"layers": "0", "modules": ["mlp"], "weight": {"bits": 3}}), {f"model.layers.0.mlp.{p}_proj" for p in ("gate", "up", "down")}, "is none of vLLM on CPU's schemes"),
    (strategy({"layers": "1", "modules": ["mlp"], "weight": {"bits": 8, "group_size": 0}}), {f"model.layers.1.mlp.{p}_proj" for p in ("gate", "up", "down")}, "is none of vLLM on CPU's schemes"),
    (strategy({"layers": "1", "modules": ["o_proj"], "weight": {"bits": 8, "group_size": 32}, "activation": {"bits": 8}}),
     {"model.layers.1.self_attn.o_proj"}, "8-bit int g32 symmetric (rtn) weights, 8-bit int per_token activations is none"),
]  # fmt: skip


@pytest.mark.parametrize(("document", "modules", "reason"), VLLM_CPU_CASES, ids=["w4a16-w8a8", "asym-int4", "int3", "int8-weight-only", "w8a8-groups"])
def test_deploy_vllm_cpu_refuses_the_schemes_its_kernels_do_not_run(arena, document, modules, reason, tmp_path):
    source = prepare_source(document, arena)
    if modules is None:
        metadata = json.loads((export(source, "compressed-tensors", tmp_path / "out", deploy="vllm-cpu") / METADATA_FILE).read_text())
        assert metadata["deploy"] == "vllm-cpu"
        return
    with pytest.raises(ExportError) as error:
        export(source, "compressed-tensors", tmp_path / "out", deploy="vllm-cpu")
    assert set(error.value.modules) == modules and reason in str(error.value)


def test_best_takes_the_runs_best_survivor_of_its_last_stage(arena, tmp_path, capsys):
    from agentqat.export import best_of_run
    from agentqat.rundir.journal import read_run

    arena_file = tmp_path / "arena.toml"
    arena_file.write_text(
        f'name = "tiny-export"\nmodel = "{arena.model}"\ncorpus = "{arena.corpus}"\nwindow_tokens = 64\ncalibration_windows = 4\n'
        'bits_budget = 5.0\n[[stages]]\nname = "screen"\nwindows = 2\npromote = 0.5\n[[stages]]\nname = "confirm"\nwindows = 2\n'
    )
    evolve = ["evolve", "--arena", str(arena_file), "--generator", "random", "--workers", "0", "--generations", "1",
              "--population", "4", "--runs", str(tmp_path), "--run", "run"]  # fmt: skip
    assert main(evolve) == 0, capsys.readouterr().err
    run = tmp_path / "run"
    rows = [row for row in read_run(run).stages["confirm"] if row.survives]
    document, run_arena, figures = best_of_run(run)
    best = min(rows, key=lambda row: row.rank)
    assert figures["strategy_id"] == best.strategy_id and figures["stage"] == "confirm"
    assert run_arena.name == "tiny-export" and document == read_run(run).documents[best.strategy_id]
    cheapest = min(row.aggregate.bits_per_weight for row in rows)
    assert best_of_run(run, max_bits=cheapest)[2]["bits_per_weight"] == cheapest
    capsys.readouterr()
    assert main(["export", str(run), "--best", "--max-bits", "1.5", "--format", "compressed-tensors", "--out", str(tmp_path / "x")]) == 2
    assert "no survivor of its last stage 'confirm' within 1.5 bits" in capsys.readouterr().err
    assert main(["export", str(run), "--best", "--format", "fake-quant", "--out", str(tmp_path / "fq")]) == 0
    metadata = json.loads((tmp_path / "fq" / METADATA_FILE).read_text())
    assert metadata["strategy"] == document and metadata["figures"]["perplexity"] == figures["perplexity"]


def test_an_arena_with_a_level_database_exports_the_stored_levels_exactly(arena, tmp_path):
    from agentqat.arena.config import Levels
    from agentqat.arena.match import Workbench
    from agentqat.strategy.document import WeightGene

    ladder = (WeightGene(bits=3, group_size=32, rounding="gptq"), WeightGene(bits=4, group_size=32, rounding="gptq"))
    with_levels = arena.model_copy(update={"levels": Levels(ladder=ladder)})
    document = strategy({"layers": "1", "modules": ["all"], "weight": {"bits": 3}}, default={"bits": 4, "group_size": 32, "rounding": "gptq"})
    source = prepare_source(document, with_levels)
    bench = Workbench(with_levels)
    database, key = bench.levels(), bench.calibration(arena.calibration_windows).key
    for name, module in source.modules.items():
        assert torch.equal(module.quantized, database.weight(name, module.config, key)), name
    export(source, "compressed-tensors", tmp_path / "out")  # raises unless the packed codes give these values back
