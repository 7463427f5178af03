"""GGUF: the registered GGML block formats quantize exactly as gguf.quants does, symmetric int grids pack into
GGML blocks bit for bit, and the export writes a file that transformers loads back into the arena's model (the
tiny llama here; the real SmolLM2 in a slow test). Strategies that do not map fail with one error naming them."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from agentqat.arena.config import load_arena
from agentqat.export.base import EXPORTERS, ExportError, ExportModule, ExportSource
from agentqat.export.gguf import GGUF_FILE
from agentqat.export.gguf_types import block_codes, gguf_problem, packed_blocks
from agentqat.models import load_model, quantizable_linears
from agentqat.quant import METHODS, WeightQuant, quantize_weight
from agentqat.quant.base import ActivationQuant, OutlierPolicy
from agentqat.quant.ggml import GGML_TYPES, ggml_blocks, ggml_values
from agentqat.quant.grid import int_grid, to_groups
from agentqat.strategy.apply import quantize_module, strategy_applied
from agentqat.strategy.bits import strategy_bits
from agentqat.strategy.document import parse_strategy
from agentqat.strategy.resolve import ModuleConfig, resolve_strategy

GGML_BITS_PER_WEIGHT = {"Q4_0": 4.5, "Q4_1": 5.0, "Q5_0": 5.5, "Q5_1": 6.0, "Q8_0": 8.5}  # ggml's block sizes / 32
MIXED = {  # every path of the exporter on the tiny llama (2 layers)
    "schema_version": 1,
    "name": "mixed-gguf",
    "default": {"weight": {"format": "gguf_q4_0", "bits": 4, "group_size": 32}},
    "rules": [
        {"layers": "1", "modules": ["attn"], "weight": {"format": "gguf_q8_0", "bits": 8}},
        {"layers": "1", "modules": ["mlp.gate_proj"], "weight": {"format": "gguf_q5_1", "bits": 5}},
        {"layers": "0", "modules": ["mlp.up_proj"], "weight": {"format": "gguf_q4_1"}},
        {"layers": "0", "modules": ["self_attn.k_proj"], "weight": {"format": "int", "symmetric": True}},
        {"layers": "0", "modules": ["self_attn.v_proj"], "weight": {"format": "int", "bits": 8, "symmetric": True}},
        {"layers": "1", "modules": ["mlp.down_proj"], "weight": {"bits": 16}},
    ],
}


def weight(seed: int = 0, out: int = 48, inp: int = 256) -> torch.Tensor:
    return torch.randn(out, inp, generator=torch.Generator().manual_seed(seed)) * 0.02


def config(**weight_genes) -> ModuleConfig:
    return ModuleConfig(WeightQuant(**weight_genes), ActivationQuant(), OutlierPolicy())


# ----------------------------------------------------------------------------------- registered GGML formats


@pytest.mark.parametrize("ggml_type", GGML_TYPES, ids=[t.type_name for t in GGML_TYPES])
def test_registered_formats_quantize_exactly_like_gguf_quants(ggml_type):
    import gguf

    w = weight()
    qtype = gguf.GGMLQuantizationType[ggml_type.type_name]
    expected = gguf.quants.dequantize(gguf.quants.quantize(w.numpy(), qtype), qtype)
    result = quantize_weight(w, WeightQuant(bits=ggml_type.bits, group_size=32, format=ggml_type.format))
    assert torch.equal(result, torch.from_numpy(expected))
    storage = METHODS[ggml_type.format].storage(WeightQuant(bits=ggml_type.bits, group_size=32), _Shape(256, 48))
    block_size, type_size = gguf.GGML_QUANT_SIZES[qtype]
    bits_per_weight = ggml_type.bits + (storage.scale_bits + storage.zero_bits) / w.numel()
    assert bits_per_weight == 8 * type_size / block_size == GGML_BITS_PER_WEIGHT[ggml_type.type_name]


class _Shape:
    def __init__(self, in_features: int, out_features: int):
        self.in_features, self.out_features = in_features, out_features


# ------------------------------------------------------------------------------- which configs map, and how

PROBLEMS = [  # (config, None when a GGML type holds it exactly, else a part of the reason)
    (config(bits=4, group_size=32, format="gguf_q4_1"), None),
    (config(bits=16), None),
    (config(bits=4, group_size=32, symmetric=True), None),
    (config(bits=5, group_size=32, symmetric=True, rounding="gptq", clip="mse"), None),
    (config(bits=8, group_size=32, symmetric=True, scale="pow2"), None),
    (config(bits=4, group_size=64, symmetric=True), "group size 64: GGUF blocks are 32 wide"),
    (config(bits=4, group_size=0, symmetric=True), "group size per channel"),
    (config(bits=4, group_size=32), "asymmetric: Q4_1/Q5_1 keep an fp16 minimum"),
    (config(bits=3, group_size=32, symmetric=True), "3-bit codes: GGUF's simple types store 4, 5 or 8 bits"),
    (config(bits=4, group_size=32, symmetric=True, rounding="awq"), "rounding awq scales each input column"),
    (config(bits=4, group_size=64, format="nf4"), "format nf4 has no GGUF type"),
    (ModuleConfig(WeightQuant(bits=8, group_size=0, format="llm_int8"), ActivationQuant(),
                  OutlierPolicy("llm_int8")), "llm_int8 outliers"),  # fmt: skip
    (ModuleConfig(WeightQuant(bits=16), ActivationQuant(bits=8), OutlierPolicy()), "8-bit activations"),
    (ModuleConfig(WeightQuant(bits=8, group_size=32, symmetric=True), ActivationQuant(smooth_alpha=0.5),
                  OutlierPolicy()), "SmoothQuant"),  # fmt: skip
]


@pytest.mark.parametrize("module_config,expected", PROBLEMS)
def test_which_configs_map_onto_a_ggml_type(module_config, expected):
    problem = gguf_problem(module_config)
    assert problem is None if expected is None else expected in problem, problem


@pytest.mark.parametrize("bits,type_name", [(4, "Q4_0"), (5, "Q5_0"), (8, "Q8_0")])
@pytest.mark.parametrize("scale,clip,rounding", [("fp16", 1.0, "rtn"), ("pow2", "mse", "rtn"), ("fp16", 0.9, "hqq")])
def test_symmetric_int_grids_pack_into_ggml_blocks_bit_for_bit(bits, type_name, scale, clip, rounding):
    w = weight()
    values = quantize_weight(w, WeightQuant(bits=bits, group_size=32, symmetric=True, scale=scale, clip=clip,
                                            rounding=rounding))  # fmt: skip
    blocks = packed_blocks(values, type_name)
    assert blocks.shape == (48, 256 // 32 * int(GGML_BITS_PER_WEIGHT[type_name] * 4))
    assert torch.equal(ggml_values(blocks, type_name).reshape(values.shape), values)
    # the same grid is not gguf's own rounding: llama.cpp rounds the scale to nearest, agentqat's int grid rounds
    # it up (and Q4_0 / Q5_0 use code -8 / -16), so an int config is packed, never requantized
    assert not torch.equal(ggml_values(ggml_blocks(w, type_name), type_name).reshape(w.shape), values)


def test_asymmetric_int_grids_do_not_fit_a_minimum_block():
    groups = to_groups(weight(out=576, inp=1536), 32)
    fitting = []
    for bits in (4, 5):
        grid = int_grid(groups, WeightQuant(bits=bits, group_size=32))
        minimum = grid.scale * grid.zero
        fitting.append(float((minimum.half().float() == minimum).float().mean()))
    assert fitting[0] < 0.5 and fitting[1] < 0.3  # measured 0.43 and 0.25: scale * zero is rarely an fp16


def test_values_off_any_block_grid_are_refused():
    with pytest.raises(ValueError, match="blocks are not an fp16 scale times codes in"):
        block_codes(weight(), -8, 7)
    scales, codes = block_codes(torch.zeros(2, 64), -8, 7)
    assert not scales.any() and not codes.any()


# ------------------------------------------------------------------------------------------ export, tiny llama


def export_source(gguf_path, document, model: str | None = None) -> tuple[ExportSource, object, object]:
    """Returns the ExportSource of `document` on `model` (default: the model converted from `gguf_path`), the loaded
    model and the resolved strategy (the arena's weights: `quantize_module`, as the arena computes them)."""
    loaded = load_model(model or str(gguf_path))
    resolved = resolve_strategy(parse_strategy(document), loaded.facts)
    modules = {}
    for name, linear in quantizable_linears(loaded.model).items():
        module_config = resolved.modules[name]
        made = quantize_module(linear, module_config, None, torch.float32)
        modules[name] = ExportModule(name, module_config, linear.weight.detach().float(), made.weight.float(),
                                     made.input_divisor)  # fmt: skip
    bits = strategy_bits(resolved, loaded.facts).bits_per_weight
    source = ExportSource(document, load_arena(), loaded.directory, gguf_path, modules, bits, {"kl": 0.0})
    return source, loaded, resolved


def load_back(out):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(out), gguf_file=GGUF_FILE, dtype=torch.float32).eval()


def test_export_loads_back_through_transformers_as_the_arenas_model(make_tiny_gguf, tmp_path):
    import gguf

    source_path = make_tiny_gguf(tensor_type="Q8_0")
    source, loaded, resolved = export_source(source_path, MIXED)
    EXPORTERS["gguf"](source, tmp_path)
    exported = load_back(tmp_path)
    ids = torch.randint(0, 512, (2, 64), generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), strategy_applied(loaded.model, resolved, None):
        arena_logits = loaded.model(input_ids=ids).logits
        for name, module in quantizable_linears(exported).items():
            assert torch.equal(module.weight, loaded.model.get_submodule(name).weight), name
    with torch.no_grad():
        assert torch.equal(exported(input_ids=ids).logits, arena_logits)

    reader, original = gguf.GGUFReader(tmp_path / GGUF_FILE), gguf.GGUFReader(source_path)
    types = {t.name: t.tensor_type.name for t in reader.tensors}
    assert types["blk.0.attn_q.weight"] == "Q4_0" and types["blk.1.attn_q.weight"] == "Q8_0"
    assert types["blk.1.ffn_gate.weight"] == "Q5_1" and types["blk.0.ffn_up.weight"] == "Q4_1"
    assert types["blk.0.attn_k.weight"] == "Q4_0" and types["blk.0.attn_v.weight"] == "Q8_0"  # int, packed
    assert types["blk.1.ffn_down.weight"] == "Q8_0"  # 16 bits: the source's own tensor (F16 would round it)
    assert types["token_embd.weight"] == types["output.weight"] == "Q8_0" and types["output_norm.weight"] == "F32"
    kept = {t.name: t for t in original.tensors}
    for tensor in reader.tensors:
        if tensor.name in ("token_embd.weight", "output.weight", "blk.1.ffn_down.weight") or tensor.data.ndim == 1:
            assert np.array_equal(tensor.data, kept[tensor.name].data), tensor.name
    for key in ("tokenizer.ggml.tokens", "tokenizer.ggml.merges", "tokenizer.chat_template", "llama.block_count"):
        assert reader.get_field(key).contents() == original.get_field(key).contents(), key
    assert json.loads(reader.get_field("agentqat.strategy").contents()) == MIXED
    assert reader.get_field("general.file_type").contents() == gguf.LlamaFileType.MOSTLY_Q4_0


def test_effective_bits_equal_the_files_linear_bytes(make_tiny_gguf, tmp_path):
    import gguf

    document = {**MIXED, "rules": MIXED["rules"][:-1]}  # every linear quantized (a 16-bit module keeps Q8_0 bytes)
    source, _, _ = export_source(make_tiny_gguf(tensor_type="Q8_0"), document)
    EXPORTERS["gguf"](source, tmp_path)
    reader = gguf.GGUFReader(tmp_path / GGUF_FILE)
    linear = [t for t in reader.tensors if t.name.startswith("blk.") and t.data.ndim == 2]
    file_bits = 8 * sum(int(t.n_bytes) for t in linear) / sum(int(t.n_elements) for t in linear)
    assert file_bits == pytest.approx(source.effective_bits, abs=1e-9)
    assert reader.get_field("agentqat.linear_file_bits").contents() == pytest.approx(file_bits, rel=1e-6)
    assert reader.get_field("agentqat.effective_bits").contents() == pytest.approx(source.effective_bits, rel=1e-6)


def test_a_strategy_that_does_not_map_is_one_error_naming_its_modules(make_tiny_gguf, tmp_path):
    document = {
        "schema_version": 1,
        "default": {"weight": {"format": "gguf_q4_0", "bits": 4, "group_size": 32}},
        "rules": [
            {"layers": "0", "modules": ["mlp"], "weight": {"format": "int", "group_size": 64, "symmetric": True}},
            {"layers": "1", "modules": ["self_attn.o_proj"], "weight": {"format": "nf4", "group_size": 64}},
        ],
    }
    source, _, _ = export_source(make_tiny_gguf(tensor_type="Q8_0"), document)
    with pytest.raises(ExportError) as caught:
        EXPORTERS["gguf"](source, tmp_path)
    message = str(caught.value)
    assert message.startswith("gguf cannot hold 4 module(s) (model.layers.0.mlp.gate_proj, ")
    assert len(caught.value.modules) == 4
    assert "model.layers.0.mlp.down_proj: group size 64: GGUF blocks are 32 wide" in message
    assert "model.layers.1.self_attn.o_proj: format nf4 has no GGUF type" in message
    assert not (tmp_path / GGUF_FILE).exists()


def test_a_model_without_its_gguf_file_is_refused(make_tiny_gguf, tmp_path):
    source, _, _ = export_source(make_tiny_gguf(tensor_type="Q8_0"), MIXED)
    with pytest.raises(ExportError, match="GGUF export needs a model loaded from a GGUF file"):
        EXPORTERS["gguf"](ExportSource(**{**source.__dict__, "gguf_path": None}), tmp_path)
    other = make_tiny_gguf(tensor_type="Q8_0", seed=1)
    with pytest.raises(ExportError, match="its base weight is not the source GGUF's blk.0.attn_q.weight"):
        EXPORTERS["gguf"](ExportSource(**{**source.__dict__, "gguf_path": other}), tmp_path)


# -------------------------------------------------------------------------------------- export, real SmolLM2

SMOLLM2_MIXED = {
    "schema_version": 1,
    "name": "smollm2-gguf-mixed",
    "default": {"weight": {"format": "gguf_q4_0", "bits": 4, "group_size": 32}},
    "rules": [
        {"layers": "15-29", "weight": {"format": "gguf_q8_0", "bits": 8}},
        {"layers": "28-29", "modules": ["attn"], "weight": {"format": "int", "bits": 4, "symmetric": True}},
        {"layers": "29", "modules": ["mlp.down_proj"], "weight": {"bits": 16}},
    ],
}


@pytest.mark.slow
def test_smollm2_export_reproduces_the_arenas_figures(tmp_path):
    """The arena's screen match of a mixed strategy, and the exported GGUF loaded back by transformers and measured
    the arena's way on the same windows: the same NLL and KL per window (measured: identical floats; the stated
    tolerance is 1e-6 relative). quality.perplexity's cross-entropy path reads ~1e-4 lower on these windows than the
    arena's logsumexp path (torch's CPU cross_entropy on [batch, vocab, tokens]), so it is not used here."""
    import os

    from agentqat.arena.match import Workbench
    from agentqat.arena.quality import compare
    from agentqat.arena.request import MatchRequest
    from agentqat.defaults import CACHE_ENV
    from agentqat.models import builtin_gguf_path

    with pytest.MonkeyPatch.context() as patch:
        if os.environ.get("AGENTQAT_TEST_MODEL_CACHE"):
            patch.setenv(CACHE_ENV, os.environ["AGENTQAT_TEST_MODEL_CACHE"])
        bench = Workbench(load_arena("smollm2-default"))
        result = bench.play(MatchRequest(SMOLLM2_MIXED, "screen", 0))
        assert result.outcome == "ok", result.message
        source, _, _ = export_source(builtin_gguf_path("smollm2-135m"), SMOLLM2_MIXED, "smollm2-135m")
    assert source.effective_bits == pytest.approx(result.cost.bits_per_weight)
    EXPORTERS["gguf"](source, tmp_path)
    exported = compare(load_back(tmp_path), bench.reference(bench.arena.stage("screen"), 0, 0))
    assert exported.perplexity == pytest.approx(result.quality.perplexity, rel=1e-6)
    assert exported.nll.tolist() == pytest.approx(result.quality.window_nll, rel=1e-6)
    assert exported.kl.tolist() == pytest.approx(result.quality.window_kl, rel=1e-6)
    print(f"\narena ppl {result.quality.perplexity!r}, exported GGUF ppl {exported.perplexity!r}, base ppl "
          f"{result.quality.base_perplexity:.4f}, effective bits {source.effective_bits:.4f}, max |nll diff| "
          f"{max(abs(a - b) for a, b in zip(exported.nll.tolist(), result.quality.window_nll))}")


@pytest.mark.parametrize("tensor_type,stored", [("F16", "F16"), ("F32", "F32")])
def test_sixteen_bit_modules_are_f16_where_f16_holds_them_else_the_source_tensor(make_tiny_gguf, tmp_path, tensor_type,
                                                                                  stored):
    import gguf

    document = {"schema_version": 1, "default": {"weight": {"bits": 16}},
                "rules": [{"layers": "0", "modules": ["q_proj"], "weight": {"format": "gguf_q8_0", "bits": 8,
                                                                             "group_size": 32}}]}  # fmt: skip
    source, loaded, _ = export_source(make_tiny_gguf(tensor_type=tensor_type), document)
    EXPORTERS["gguf"](source, tmp_path)
    types = {t.name: t.tensor_type.name for t in gguf.GGUFReader(tmp_path / GGUF_FILE).tensors}
    assert types["blk.0.attn_q.weight"] == "Q8_0"
    assert {types[f"blk.{i}.{n}.weight"] for i in (0, 1) for n in ("ffn_down", "attn_v")} == {stored}
    exported = load_back(tmp_path)
    for name, module in quantizable_linears(exported).items():
        assert torch.equal(module.weight, source.modules[name].quantized), name


def test_a_quantized_gguf_dequantizes_to_an_f32_copy_with_its_tokenizer(make_tiny_gguf, tmp_path):
    from gguf import GGUFReader

    from agentqat.engines.gguf_tensors import dequantized_copy, field_value, stored_values

    source = make_tiny_gguf(tensor_type="Q8_0")
    copy = dequantized_copy(source, tmp_path / "base-f32.gguf")
    before, after = GGUFReader(str(source)), GGUFReader(str(copy))
    assert {t.tensor_type.name for t in before.tensors} > {"F32"} and {t.tensor_type.name for t in after.tensors} == {"F32"}
    kept = {t.name: t for t in after.tensors}
    for tensor in before.tensors:
        assert torch.equal(stored_values(kept[tensor.name]), stored_values(tensor)), tensor.name
    for key in ("general.architecture", "tokenizer.ggml.tokens", "tokenizer.ggml.model"):
        assert field_value(after, key) == field_value(before, key)
    assert field_value(after, "general.file_type") == 0  # ALL_F32
