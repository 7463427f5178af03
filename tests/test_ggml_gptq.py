"""GPTQ inside GGML's 32-wide types: blocks that gguf dequantizes to exactly the values the arena plays, the full
table in use, a lower output error than the type's own rounding, the level database holding the blocks, and (with
the pinned llama.cpp) an [engine] arena's export whose tensors are those blocks."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType, quants

from agentqat.engines.ggml_blocks import encode
from agentqat.quant import WeightQuant, quantize_weight
from agentqat.quant.base import LayerStats
from agentqat.quant.ggml import ggml_blocks, ggml_values
from agentqat.quant.ggml_gptq import GPTQ_TYPES, block_scales, gptq_blocks
from agentqat.quant.gptq import GptqSettings

TYPES = [t.type_name for t in GPTQ_TYPES]
ROWS, COLUMNS, TOKENS = 48, 256, 2048


def _layer(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Returns (weight, inputs, hessian): inputs whose channels differ in scale and are correlated, as a model's are."""
    generator = torch.Generator().manual_seed(seed)
    weight = torch.randn(ROWS, COLUMNS, generator=generator) * 0.05
    mixing = torch.eye(COLUMNS) + 0.3 * torch.randn(COLUMNS, COLUMNS, generator=generator) / COLUMNS**0.5
    inputs = (torch.randn(TOKENS, COLUMNS, generator=generator) * torch.linspace(0.2, 3.0, COLUMNS)) @ mixing
    return weight, inputs, inputs.T @ inputs / TOKENS


def _output_error(weight: torch.Tensor, quantized: torch.Tensor, inputs: torch.Tensor) -> float:
    return float(((weight - quantized) @ inputs.T).pow(2).mean())


@pytest.mark.parametrize("type_name", TYPES)
def test_gptq_blocks_are_what_gguf_dequantizes(type_name):
    weight, _, hessian = _layer()
    blocks = gptq_blocks(weight, type_name, hessian)
    raw = encode(blocks)
    assert raw.shape == (ROWS, quants.quant_shape_to_byte_shape((COLUMNS,), GGMLQuantizationType[type_name])[0])
    held = torch.from_numpy(quants.dequantize(raw, GGMLQuantizationType[type_name])).reshape(ROWS, COLUMNS)
    assert torch.equal(held, blocks.values())
    assert torch.equal(blocks.d, blocks.d.to(torch.float16).to(torch.float32))  # d is the file's fp16


@pytest.mark.parametrize("type_name", TYPES)
def test_gptq_lowers_the_output_error_below_the_types_own_rounding(type_name):
    weight, inputs, hessian = _layer(1)
    found = gptq_blocks(weight, type_name, hessian).values()
    if type_name == "IQ4_NL":  # gguf has no IQ4_NL quantizer: the same scales, each weight to its nearest entry
        nearest = gptq_blocks(weight, type_name, torch.eye(COLUMNS), GptqSettings(act_order=False, damp=1e-6)).values()
        reference = nearest
    else:
        reference = ggml_values(ggml_blocks(weight, type_name), type_name).reshape(weight.shape)
    assert _output_error(weight, found, inputs) < 0.9 * _output_error(weight, reference, inputs)


def test_q4_0_uses_its_full_code_range():
    weight, _, hessian = _layer(2)
    blocks = gptq_blocks(weight, "Q4_0", hessian)
    assert int(blocks.index.min()) == 0 and int(blocks.index.max()) == 15  # values -8 and 7 both in use


def test_the_scale_search_fits_better_than_absmax_and_keeps_zero_blocks():
    weight, _, hessian = _layer(3)
    weight[:, :32] = 0.0
    importance = hessian.diagonal()
    d = block_scales(weight, "IQ4_NL", importance)
    assert torch.all(d[:, 0] == 0) and torch.all(d[:, 1:] != 0)
    blocks = gptq_blocks(weight, "IQ4_NL", hessian)
    assert torch.all(blocks.values()[:, :32] == 0)
    table = torch.tensor((-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113), dtype=torch.float32)
    x = weight.reshape(ROWS, -1, 32)[:, 1:]
    weights = importance.reshape(-1, 32)[1:] * torch.sqrt(2 * (x * x).mean(-1, keepdim=True) + x * x)

    def fit(scale: torch.Tensor) -> torch.Tensor:
        q = table[(x[..., None] / scale[..., None, None] - table).abs().argmin(-1)] * scale[..., None]
        return (weights * (x - q) ** 2).sum(-1)

    absmax = -x.gather(-1, x.abs().argmax(-1, keepdim=True))[..., 0] / 127
    assert torch.all(fit(d[:, 1:]) <= fit(absmax) * (1 + 1e-3))


def test_the_method_is_registered_and_needs_the_layers_hessian():
    weight, _, hessian = _layer()
    config = WeightQuant(bits=4, group_size=32, format="gguf_iq4_nl", rounding="gptq", scale="fp16", clip=1.0)
    with pytest.raises(ValueError, match="needs calibration"):
        quantize_weight(weight, config)
    stats = LayerStats(hessian=hessian, abs_mean=hessian.diagonal().sqrt(), abs_max=hessian.diagonal().sqrt(), tokens=TOKENS)
    assert torch.equal(quantize_weight(weight, config, stats), gptq_blocks(weight, "IQ4_NL", hessian).values())


def test_a_level_database_holds_the_blocks_and_reads_back_their_values(tmp_path, monkeypatch, make_tiny_gguf):
    from agentqat.levels.database import LevelDatabase, build_database, holds_blocks, module_bytes
    from agentqat.levels.ladder import WeightGene, ladder_configs
    from agentqat.models import load_model, quantizable_linears
    from agentqat.strategy.apply import quantize_module
    from agentqat.strategy.calibration import collect_stats

    monkeypatch.setenv("AGENTQAT_CACHE_DIR", str(tmp_path))
    loaded = load_model(str(make_tiny_gguf()), torch.float32)
    ladder = ladder_configs((WeightGene(bits=4, group_size=32, format="gguf_iq4_nl", rounding="gptq"),), loaded.facts)
    windows = torch.randint(0, loaded.facts.vocab_size, (4, 32), generator=torch.Generator().manual_seed(0))
    from agentqat.strategy.calibration import Calibration

    calibration = Calibration("tiny-test", collect_stats(loaded.model, windows))
    directory = build_database(loaded.model, "tiny", calibration, ladder)
    database = LevelDatabase(directory, ladder, calibration.key)
    (config,) = ladder
    assert holds_blocks(config)
    for name, linear in quantizable_linears(loaded.model).items():
        blocks = database.blocks(name, config)
        made = quantize_module(linear, config, calibration.stats[name], torch.float32).weight
        assert blocks is not None and blocks.type_name == "IQ4_NL"
        assert torch.equal(database.weight(name, config, calibration.key), made) and torch.equal(blocks.values(), made)
    data = sum(module_bytes(config, info) for info in loaded.facts.linears)
    assert data == sum(info.in_features * info.out_features // 32 * 18 for info in loaded.facts.linears)


@pytest.mark.slow
def test_an_engine_strategy_with_gptq_levels_exports_those_blocks_and_llama_cpp_measures_them(llama_cpp, make_tiny_gguf, small_corpus_file, tmp_path, capsys):
    from gguf import GGUFReader
    from test_engines import engine_arena, uniform

    from agentqat.arena.config import Engine
    from agentqat.arena.match import Workbench
    from agentqat.cli import main
    from agentqat.engines.gguf_tensors import module_values
    from agentqat.export import export, prepare_source
    from agentqat.levels.head import head_module
    from agentqat.models import load_model

    tiny = engine_arena(make_tiny_gguf(weight_std=0.25), small_corpus_file)
    arena = tiny.model_copy(update={"engine": Engine(embedding="Q8_0", embedding_rounding="gptq")})
    gptq = {"format": "gguf_q5_0", "bits": 5, "rounding": "gptq"}
    document = uniform("gguf_iq4_nl", 4) | {"rules": [{"layers": "0", "modules": ["mlp"], "weight": gptq}]}
    source = prepare_source(document, arena)
    own = {name: module for name, module in source.modules.items() if module.blocks is not None}
    assert own and {module.blocks.type_name for module in own.values()} == {"Q5_0"}
    (head, blocks), = source.engine.head.items()
    assert head == head_module(load_model(arena.model, torch.float32).model) and blocks.type_name == "Q8_0"
    out = export(source, "gguf", tmp_path / "gguf", "gguf")
    written = module_values(GGUFReader(str(out / "model.gguf")), [*own, head])
    assert all(torch.equal(written[name], module.quantized) for name, module in own.items())  # the file = the scored weights
    assert torch.equal(written[head], blocks.values())  # the head the arena played: GPTQ's, not llama-quantize's
    assert torch.equal(Workbench(arena).engine_embedding()[head], blocks.values())
    assert "wrote blocks of its own" in (out / "llama-quantize.sh").read_text()
    assert main(["engine-eval", str(out / "model.gguf"), "--model", arena.model, "--corpus", arena.corpus,
                 "--text", "evaluation", "--chunks", "4", "--context", "64", "--json"]) == 0  # fmt: skip
    assert np.isfinite(json.loads(capsys.readouterr().out)["kl"]["mean_kl"])
