"""AWQ folded into the norms and the up projection: the model computes the same function, the scaled weights round
into a GGML type with less proxy error, on tiny Llama and Gemma 3 models built here."""

import pytest
import torch

from agentqat.quant.awq_fold import FOLD_TYPES, FoldGroup, _fold, best_scales, fold_awq, fold_groups, round_in_type
from agentqat.quant.proxy import proxy_error
from agentqat.strategy.calibration import collect_stats


def _llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=128, tie_word_embeddings=True)  # fmt: skip
    return LlamaForCausalLM(config).eval()


def _gemma():
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    config = Gemma3TextConfig(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                              num_key_value_heads=1, head_dim=16, vocab_size=128, sliding_window=8)  # fmt: skip
    return Gemma3ForCausalLM(config).eval()


def _with_salient_channels(model):
    """Gives the norms a few large channels, as trained models have: AWQ's scales then matter."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, module in model.named_modules():
            if name.endswith("norm") and module.weight.ndim == 1:
                module.weight.add_(torch.rand(module.weight.shape, generator=generator))
                module.weight[:4] += 6.0
    return model


@pytest.mark.parametrize("make", [_llama, _gemma], ids=["llama", "gemma3"])
def test_folding_scales_leaves_the_function_unchanged(make):
    torch.manual_seed(0)
    model = make()
    ids = torch.randint(0, 128, (2, 24))
    before = model(input_ids=ids).logits
    groups = fold_groups(model)
    assert len(groups) == 3 * 2 and groups[2] == FoldGroup("model.layers.0.mlp.up_proj", ("model.layers.0.mlp.down_proj",))
    for group in groups:
        width = dict(model.named_modules())[group.consumers[0]].in_features
        _fold(model, group, torch.rand(width) * 3 + 0.2)
    assert torch.allclose(model(input_ids=ids).logits, before, atol=1e-4)


@pytest.mark.parametrize("make", [_llama, _gemma], ids=["llama", "gemma3"])
def test_fold_awq_picks_scales_no_worse_than_none_and_keeps_the_function(make):
    torch.manual_seed(1)
    model = _with_salient_channels(make())
    windows = torch.randint(0, 128, (4, 32))
    stats = collect_stats(model, windows)
    before = model(input_ids=windows).logits
    records, scales = fold_awq(model, stats, "Q4_0")
    assert set(scales) == {record["source"] for record in records if record["alpha"] > 0}
    assert len(records) == 6 and all(r["proxy_error"] <= r["proxy_error_unscaled"] for r in records)
    assert any(r["alpha"] > 0 and r["proxy_error"] < 0.9 * r["proxy_error_unscaled"] for r in records)
    assert torch.allclose(model(input_ids=windows).logits, before, atol=1e-3)


def test_round_in_type_stays_on_the_type_grid():
    from agentqat.quant.ggml_gptq import block_scales

    torch.manual_seed(2)
    weight = torch.randn(8, 64)
    rounded = round_in_type(weight, "Q4_0", torch.ones(64))
    codes = rounded / block_scales(weight, "Q4_0", torch.ones(64)).repeat_interleave(32, dim=1)
    assert torch.allclose(codes, codes.round(), atol=1e-4) and codes.min() >= -8 and codes.max() <= 7
    assert proxy_error(weight, rounded, torch.eye(64)) < 0.02 * weight.square().sum()
    with pytest.raises(ValueError, match="Q4_1 is not one of"):
        round_in_type(weight, "Q4_1", torch.ones(64))
    assert set(FOLD_TYPES) == {"Q4_0", "Q5_0", "Q8_0", "IQ4_NL"}


def test_best_scales_at_alpha_zero_is_no_scaling():
    from agentqat.quant.base import LayerStats

    torch.manual_seed(3)
    x = torch.randn(256, 64)
    stats = LayerStats(x.T @ x / 256, x.abs().mean(0), x.abs().amax(0), 256)
    alpha, scales, error, unscaled = best_scales([torch.randn(16, 64)], stats, "IQ4_NL")
    assert error <= unscaled and scales.shape == (64,) and 0 <= alpha < 1
