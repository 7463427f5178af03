"""Polish inside GGML's own grids: the 32-wide types' blocks read and written exactly (against gguf's reference
code), a layer trained inside them that freezes onto their blocks, and (with the pinned llama.cpp) a polish of an
[engine] arena's strategy exported as a GGUF whose polished tensors are those blocks, which llama.cpp then measures."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType, quants

from agentqat.engines.ggml_blocks import LAYOUTS, decode, encode
from agentqat.polish.ggml_grid import GgmlQatLinear

ROWS, COLUMNS = 6, 64


def _weights(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(scale=0.05, size=(ROWS, COLUMNS)).astype(np.float32)


def _raw(type_name: str, seed: int = 0) -> np.ndarray:
    if type_name == "IQ4_NL":  # gguf has no IQ4_NL quantizer: random indices under a plausible fp16 scale
        raw = np.random.default_rng(seed).integers(0, 256, size=(ROWS, COLUMNS // 32 * 18), dtype=np.uint8)
        raw.reshape(-1, 18)[:, :2] = np.full((ROWS * COLUMNS // 32, 1), 4e-4, dtype=np.float16).view(np.uint8)
        return raw
    return quants.quantize(_weights(seed), GGMLQuantizationType[type_name])


@pytest.mark.parametrize("type_name", sorted(LAYOUTS))
def test_blocks_read_and_write_back_exactly_as_gguf_dequantizes_them(type_name):
    raw = _raw(type_name)
    blocks = decode(raw, type_name, COLUMNS)
    assert np.array_equal(encode(blocks), raw)
    expected = quants.dequantize(raw, GGMLQuantizationType[type_name]).reshape(ROWS, COLUMNS)
    assert torch.equal(blocks.values(), torch.from_numpy(np.ascontiguousarray(expected)))


def test_a_type_that_is_not_32_wide_is_refused():
    with pytest.raises(ValueError, match="not a 32-wide GGML type"):
        decode(np.zeros((2, 84), dtype=np.uint8), "Q2_K", 256)


@pytest.mark.parametrize("type_name", ["Q4_0", "Q4_1", "IQ4_NL"])
def test_an_untrained_layer_computes_and_freezes_onto_the_blocks_it_started_from(type_name):
    start = decode(_raw(type_name), type_name, COLUMNS)
    layer = GgmlQatLinear("m", start, None)
    assert torch.allclose(layer.quantized_weight().detach(), start.values(), rtol=1e-6, atol=1e-7)  # d as 2^log2|d|
    frozen = layer.frozen()
    assert np.array_equal(encode(frozen.blocks), encode(start)) and torch.equal(frozen.weight, start.values())


@pytest.mark.parametrize("type_name", ["Q4_0", "Q4_1", "Q5_0", "IQ4_NL"])
def test_training_inside_a_type_lowers_the_error_and_freezes_onto_its_blocks(type_name):
    target = torch.from_numpy(_weights(1))
    start = decode(_raw(type_name, 2), type_name, COLUMNS)  # the blocks of another weight
    layer = GgmlQatLinear("m", start, None)
    inputs = torch.randn(256, COLUMNS, generator=torch.Generator().manual_seed(0))
    loss = lambda: torch.nn.functional.mse_loss(layer(inputs), inputs @ target.T)  # noqa: E731
    before = loss().item()
    optimizer = torch.optim.Adam([layer.weight, layer.scale] + ([layer.zero] if layer.zero.requires_grad else []), lr=2e-3)
    for _ in range(150):
        optimizer.zero_grad()
        loss().backward()
        optimizer.step()
    frozen = layer.frozen()
    assert frozen.blocks.type_name == type_name and torch.equal(frozen.weight, frozen.blocks.values())
    raw = encode(frozen.blocks)
    read = quants.dequantize(raw, GGMLQuantizationType[type_name]).reshape(ROWS, COLUMNS)
    assert torch.equal(frozen.weight, torch.from_numpy(np.ascontiguousarray(read)))  # what llama.cpp reads
    after = torch.nn.functional.mse_loss(inputs @ frozen.weight.T, inputs @ target.T).item()
    assert after < 0.7 * before


def test_a_block_of_zeros_stays_as_it_is():
    raw = _raw("Q4_0")
    raw[0, :2] = 0  # d = 0: the first block is all zeros
    layer = GgmlQatLinear("m", decode(raw, "Q4_0", COLUMNS), None)
    with torch.no_grad():
        layer.weight.add_(0.01)
    assert torch.equal(layer.frozen().weight[0, :32], torch.zeros(32))


@pytest.mark.slow
def test_a_polished_engine_strategy_exports_its_trained_blocks_and_llama_cpp_measures_them(llama_cpp, make_tiny_gguf, small_corpus_file, tmp_path, capsys):
    from gguf import GGUFReader
    from test_engines import engine_arena, uniform

    from agentqat.cli import main
    from agentqat.engines.gguf_tensors import module_values
    from agentqat.export import export, prepare_source
    from agentqat.polish import PolishSettings
    from agentqat.session.polish import polish_strategy

    arena = engine_arena(make_tiny_gguf(weight_std=0.25), small_corpus_file)
    document = uniform("gguf_iq4_nl", 4) | {"rules": [{"layers": "0", "modules": ["mlp"], "weight": {"format": "gguf_q4_0", "bits": 4}}]}
    settings = PolishSettings(windows=4, epochs=2)
    outcome = polish_strategy(document, arena, settings, tmp_path / "polish", test_windows=0, heldout_windows=2)
    trained = {name: weight for name, weight in outcome.polish.weights.items() if weight.blocks is not None}
    assert trained and all(weight.grid is None for weight in trained.values())
    assert {weight.blocks.type_name for weight in trained.values()} <= {"IQ4_NL", "Q4_0"}
    assert json.loads((tmp_path / "polish" / "polish.json").read_text())["selected"]["on"] == "heldout"

    out = export(prepare_source(document, arena, polished=tmp_path / "polish"), "gguf", tmp_path / "gguf", "gguf")
    unpolished = export(prepare_source(document, arena), "gguf", tmp_path / "unpolished", "gguf")
    assert (out / "model.gguf").stat().st_size == (unpolished / "model.gguf").stat().st_size
    written = module_values(GGUFReader(str(out / "model.gguf")), list(trained))
    assert all(torch.equal(written[name], weight.weight) for name, weight in trained.items())  # llama.cpp's file = the scored weights
    assert "wrote blocks of its own" in (out / "llama-quantize.sh").read_text()
    assert main(["engine-eval", str(out / "model.gguf"), "--model", arena.model, "--corpus", arena.corpus,
                 "--text", "evaluation", "--chunks", "4", "--context", "64", "--json"]) == 0  # fmt: skip
    assert json.loads(capsys.readouterr().out)["kl"]["mean_kl"] > 0
