"""Applying strategies to a tiny real Llama: base weights untouched, cheap restore, caching, calibration."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from agentqat.models import model_facts, quantizable_linears
from agentqat.strategy.apply import LayerCache, QuantizedLinear, apply_strategy, restore, strategy_applied
from agentqat.strategy.calibration import calibration_key, collect_stats, load_or_collect
from agentqat.strategy.document import parse_strategy
from agentqat.strategy.resolve import resolve_strategy


@pytest.fixture(scope="module")
def model(tiny_llama_dir):
    return AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def windows():
    return torch.randint(4, 512, (4, 32), generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def calibration(model, windows):
    return load_or_collect(model, calibration_key("tiny", None, "random", windows), windows)


def resolved(model, document):
    return resolve_strategy(parse_strategy(document), model_facts(model, "tiny"))


def logits(model, windows):
    with torch.inference_mode():
        return model(input_ids=windows).logits


def test_base_weights_are_untouched_and_restore_is_exact(model, windows, calibration):
    before = {name: module.weight.clone() for name, module in quantizable_linears(model).items()}
    base_logits = logits(model, windows)
    strategy = resolved(model, {"default": {"weight": {"bits": 3, "group_size": 32, "rounding": "gptq"}}})
    applied = apply_strategy(model, strategy, calibration)
    assert len(applied.originals) == 14
    assert all(isinstance(model.get_submodule(name), QuantizedLinear) for name in applied.originals)
    assert not torch.allclose(logits(model, windows), base_logits)
    restore(model, applied)
    assert torch.equal(logits(model, windows), base_logits)
    for name, module in quantizable_linears(model).items():
        assert torch.equal(module.weight, before[name])


def test_context_manager_restores_after_an_error(model, windows):
    base_logits = logits(model, windows)
    with pytest.raises(RuntimeError, match="boom"):
        with strategy_applied(model, resolved(model, {"default": {"weight": {"bits": 2}}}), None):
            raise RuntimeError("boom")
    assert torch.equal(logits(model, windows), base_logits)


def test_eight_bits_stay_close_and_two_bits_do_not(model, windows):
    base = logits(model, windows)
    with strategy_applied(model, resolved(model, {"default": {"weight": {"bits": 8, "group_size": 32}}}), None):
        eight = (logits(model, windows) - base).abs().mean().item()
    with strategy_applied(model, resolved(model, {"default": {"weight": {"bits": 2, "group_size": 32}}}), None):
        two = (logits(model, windows) - base).abs().mean().item()
    assert eight < 0.02 * base.abs().mean().item()
    assert two > 10 * eight


def test_unquantized_modules_are_not_swapped(model):
    strategy = resolved(model, {"default": {"weight": {"bits": 16}}, "rules": [{"modules": ["q_proj"], "weight": {"bits": 4, "group_size": 32}}]})
    applied = apply_strategy(model, strategy, None)
    try:
        assert sorted(applied.originals) == ["model.layers.0.self_attn.q_proj", "model.layers.1.self_attn.q_proj"]
    finally:
        restore(model, applied)


def test_layer_cache_reuses_quantized_modules(model, calibration):
    cache = LayerCache()
    first = resolved(model, {"default": {"weight": {"bits": 4, "group_size": 32}}})
    second = resolved(model, {"default": {"weight": {"bits": 4, "group_size": 32}}, "rules": [{"modules": ["mlp"], "weight": {"bits": 8}}]})
    for strategy in (first, second, first):
        restore(model, apply_strategy(model, strategy, calibration, cache))
    assert cache.misses == 14 + 6  # every module once, then the six MLP modules at 8 bits
    assert cache.hits == 8 + 14
    assert cache.hit_rate == pytest.approx(22 / 42)


def test_layer_cache_stays_within_its_byte_budget(model):
    cache = LayerCache(max_bytes=3 * 64 * 128 * 4)
    restore(model, apply_strategy(model, resolved(model, {"default": {"weight": {"bits": 4, "group_size": 32}}}), None, cache))
    assert cache.bytes <= cache.max_bytes
    assert len(cache.entries) <= 3


def test_fp16_compute_runs_linears_in_fp16(model, windows):
    with strategy_applied(model, resolved(model, {"default": {"weight": {"bits": 8, "group_size": 32}}, "arithmetic": {"compute_dtype": "fp16"}}), None) as applied:
        module = model.get_submodule(next(iter(applied.originals)))
        assert module.weight.dtype == torch.float16
        assert torch.isfinite(logits(model, windows)).all()


def test_smoothing_and_activation_quantization(model, windows, calibration):
    base = logits(model, windows)
    smooth = {"default": {"weight": {"bits": 16}, "activation": {"bits": 8, "smooth_alpha": 0.5}}}
    with strategy_applied(model, resolved(model, smooth), calibration) as applied:
        module = model.get_submodule(next(iter(applied.originals)))
        assert module.input_divisor is not None
        error = (logits(model, windows) - base).abs().mean().item()
    assert 0 < error < 0.05 * base.abs().mean().item()


def test_calibration_statistics_match_the_inputs(model, windows):
    captured = {}
    name = "model.layers.1.mlp.down_proj"
    handle = model.get_submodule(name).register_forward_pre_hook(lambda m, inputs: captured.setdefault("x", inputs[0].clone()))
    with torch.inference_mode():
        model(input_ids=windows)
    handle.remove()
    stats = collect_stats(model, windows, batch_size=4)
    x = captured["x"].reshape(-1, captured["x"].shape[-1])
    assert stats[name].tokens == x.shape[0]
    assert torch.allclose(stats[name].hessian, x.T @ x / x.shape[0], rtol=1e-4, atol=1e-5)
    assert torch.allclose(stats[name].abs_max, x.abs().amax(0))
    assert torch.allclose(stats[name].abs_mean, x.abs().mean(0), rtol=1e-5)


def test_modules_reading_the_same_input_share_statistics(model, windows):
    stats = collect_stats(model, windows)
    layer = "model.layers.0."
    assert stats[layer + "self_attn.q_proj"] is stats[layer + "self_attn.k_proj"] is stats[layer + "self_attn.v_proj"]
    assert stats[layer + "mlp.gate_proj"] is stats[layer + "mlp.up_proj"]
    assert stats[layer + "self_attn.o_proj"] is not stats[layer + "self_attn.q_proj"]


def test_calibration_is_cached_on_disk_and_sharing_survives(model, windows, calibration):
    again = load_or_collect(model, calibration.key, windows)
    name = "model.layers.0.self_attn.q_proj"
    assert torch.equal(again.stats[name].hessian, calibration.stats[name].hessian)
    assert again.stats[name] is again.stats["model.layers.0.self_attn.v_proj"]


@pytest.mark.parametrize("bad_value", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_logits_are_flagged(model, windows, bad_value):
    from agentqat.arena.quality import compare, reference_of

    reference = reference_of(model, windows)
    assert compare(model, reference).finite
    head = model.lm_head.weight
    original = head.data[7].clone()
    head.data[7] = bad_value
    try:
        assert not compare(model, reference).finite
    finally:
        head.data[7] = original
