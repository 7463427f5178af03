"""Block-wise QAT (agentqat.polish, agentqat polish) on a tiny Llama with weights N(0, 0.1^2): 3 and 2 bits hurt it
measurably and polishing can win part of it back in seconds."""

from __future__ import annotations

import gc
import json
import math

import pytest
import torch

from agentqat.arena.quality import compare, reference_of
from agentqat.cli import main
from agentqat.data import load_corpus, sample_windows, tokenize
from agentqat.models import load_model
from agentqat.polish import PolishSettings, QatLinear, block_order, on_grid, polish_model, round_ste
from agentqat.polish.curriculum import converged, stages
from agentqat.quant.base import WeightQuant
from agentqat.quant.registry import quantize_weight
from agentqat.strategy.apply import strategy_applied
from agentqat.strategy.calibration import Calibration, collect_stats
from agentqat.strategy.document import parse_strategy
from agentqat.strategy.resolve import resolve_strategy

TRAINING = dict(epochs=3, weight_lr=1e-3, scale_lr=1e-2)  # the tiny model's weights are ~5x SmolLM2's


def uniform(bits: int, scale: str = "fp16") -> dict:
    weight = {"bits": bits, "group_size": 32, "symmetric": False, "rounding": "gptq", "scale": scale}
    return {"schema_version": 1, "name": f"gptq-w{bits}g32-{scale}", "default": {"weight": weight}, "rules": []}


@pytest.fixture(scope="module")
def bench(make_tiny_llama):
    """The tiny model, 32 calibration and 8 held-out windows of 64 tokens, calibration and base references."""
    torch.set_num_threads(1)
    loaded = load_model(str(make_tiny_llama(weight_std=0.1)))
    corpus = load_corpus("lee-news")
    windows = sample_windows(tokenize(loaded.tokenizer, corpus.calibration[:200_000]), 64, 32, 0)
    heldout = sample_windows(tokenize(loaded.tokenizer, corpus.evaluation[:100_000]), 64, 8, 0)
    calibration = Calibration("tiny", collect_stats(loaded.model, windows))
    return loaded, windows, calibration, reference_of(loaded.model, heldout)


def _quality(loaded, resolved, calibration, reference, overrides=None):
    with strategy_applied(loaded.model, resolved, calibration, overrides=overrides):
        return compare(loaded.model, reference)


@pytest.mark.parametrize("scale", ["fp16", "pow2"])
def test_the_straight_through_estimator_takes_gradients_to_weights_and_scales(scale):
    weight = torch.randn(8, 64, generator=torch.Generator().manual_seed(0)) * 0.1
    layer = QatLinear.from_weights("m", weight, weight, None, WeightQuant(bits=3, group_size=32, scale=scale))
    layer(torch.randn(5, 64, generator=torch.Generator().manual_seed(1))).square().sum().backward()
    assert layer.weight.grad.abs().sum() > 0 and layer.scale.grad.abs().sum() > 0
    x = torch.tensor([0.4, 1.6], requires_grad=True)
    round_ste(x).sum().backward()
    assert x.grad.tolist() == [1.0, 1.0]


def test_a_layer_starts_on_the_quantizers_grid_and_a_pow2_layer_stays_on_powers_of_two():
    weight = torch.randn(8, 64, generator=torch.Generator().manual_seed(0)) * 0.1
    for scale in ("fp16", "pow2"):
        config = WeightQuant(bits=3, group_size=32, scale=scale)
        quantized = quantize_weight(weight, config)
        frozen = QatLinear.from_weights("m", weight, quantized, None, config).frozen()
        assert torch.allclose(frozen.weight, quantized) and on_grid(frozen)
    exponents = torch.log2(frozen.grid.scale)
    assert torch.equal(exponents, exponents.round())


@pytest.mark.parametrize("bits,scale", [(3, "fp16"), (2, "fp16"), (3, "pow2")])
def test_polishing_lowers_block_loss_and_heldout_kl_and_keeps_weights_on_the_grid(bench, bits, scale):
    loaded, windows, calibration, reference = bench
    resolved = resolve_strategy(parse_strategy(uniform(bits, scale)), loaded.facts)
    polished = polish_model(loaded.model, resolved, calibration.stats, windows, PolishSettings(**TRAINING))
    assert [block.layer for block in polished.blocks] == [0, 1]
    assert all(block.loss_after < block.loss_before for block in polished.blocks)
    assert set(polished.weights) == set(resolved.modules) and all(on_grid(w) for w in polished.weights.values())
    assert all(w.grid.qmax == 2**bits - 1 for w in polished.weights.values())  # the bit count is the strategy's
    before = _quality(loaded, resolved, calibration, reference)
    after = _quality(loaded, resolved, calibration, reference, {n: w.weight for n, w in polished.weights.items()})
    assert after.kl.mean() < 0.9 * before.kl.mean()
    # a random model's perplexity is no quality in itself: polishing brings it nearer the base model's
    assert abs(math.log(after.perplexity / reference.perplexity)) < abs(math.log(before.perplexity / reference.perplexity))


@pytest.mark.filterwarnings("ignore::FutureWarning")  # gc.get_objects() meets deprecated torch aliases
def test_one_blocks_training_state_at_a_time_and_the_model_unchanged(bench):
    loaded, windows, calibration, _ = bench
    resolved = resolve_strategy(parse_strategy(uniform(2, "pow2")), loaded.facts)
    state = {name: tensor.clone() for name, tensor in loaded.model.state_dict().items()}
    seen = []

    class Watch:
        def phase_started(self, name, total=None, detail=""):
            pass

        def phase_advanced(self, steps=1):
            live = [o for o in gc.get_objects() if isinstance(o, QatLinear)]
            seen.append({o.name.split(".layers.")[1].split(".")[0] for o in live})
            assert len(live) == 7 and all(p.grad is None for p in loaded.model.parameters())

        def phase_finished(self, name, seconds):
            pass

    settings = PolishSettings(epochs=1, curriculum=True, order="sensitivity", weight_lr=1e-3)
    polished = polish_model(loaded.model, resolved, calibration.stats, windows[:6], settings, {0: 0.1, 1: 0.5}, Watch())
    assert [block.layer for block in polished.blocks] == [1, 0] and polished.blocks[0].bits == (4, 3, 2)
    assert seen and all(len(layers) == 1 for layers in seen)
    assert all(torch.equal(state[name], tensor) for name, tensor in loaded.model.state_dict().items())


def test_the_curriculum_and_the_order():
    assert stages([2, 3], True) == [4, 3, 2] and stages([3], True) == [4, 3] and stages([4, 8], True) == [4]
    assert stages([2], False) == [2]
    assert converged([1.0, 0.995], 0.01) and not converged([1.0, 0.9], 0.01) and not converged([1.0], 0.01)
    assert block_order(3, "natural", None) == [0, 1, 2] and block_order(3, "sensitivity", {0: 0.1, 1: 0.9, 2: 0.5}) == [1, 2, 0]
    with pytest.raises(ValueError):
        block_order(3, "sensitivity", None)


@pytest.fixture(scope="module")
def tiny_polish_arena(make_tiny_llama, small_corpus_file, tmp_path_factory):
    path = tmp_path_factory.mktemp("arena") / "tiny-polish.toml"
    path.write_text(
        f'name = "tiny-polish"\nmodel = "{make_tiny_llama(weight_std=0.1)}"\ncorpus = "{small_corpus_file}"\nwindow_tokens = 64\n'
        'calibration_windows = 8\ncollapse_ratio = 1000.0\n[[stages]]\nname = "screen"\nwindows = 2\n[[stages]]\nname = "confirm"\nwindows = 2\nwindow_sets = 2\n'
    )
    return path


def test_polish_cli_plays_and_records_the_polished_strategy(tiny_polish_arena, tmp_path, capsys):
    strategy = tmp_path / "s.json"
    strategy.write_text(json.dumps(uniform(2)))
    out = tmp_path / "polish"
    args = ["polish", "--strategy", str(strategy), "--arena", str(tiny_polish_arena), "--windows", "8", "--epochs", "3",
            "--weight-lr", "1e-3", "--scale-lr", "1e-2", "--heldout-windows", "2", "--test-windows", "2", "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "unpolished against polished" in printed and "chosen on held-out text" in printed
    # both are played on the arena's stage and on held-out text, where the final one is chosen; only that one is
    # played on the test split, once
    record = json.loads((out / "polish.json").read_text())
    assert len(record["blocks"]) == 2
    heldout = [json.loads(line) for line in (out / "heldout.jsonl").read_text().splitlines()]
    assert [(r["stage"], r["strategy_id"].endswith("-polished")) for r in heldout] == [("heldout", False), ("heldout", True)]
    chosen = "polished" if heldout[1]["quality"]["kl"] < heldout[0]["quality"]["kl"] else "unpolished"
    assert record["selected"]["strategy"] == chosen and record["selected"]["on"] == "heldout"
    results = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [(r["stage"], r["window_set"], r["strategy_id"].endswith("-polished")) for r in results] == [
        ("confirm", 0, False), ("confirm", 1, False), ("confirm", 0, True), ("confirm", 1, True), ("test", 0, chosen == "polished"),
    ]  # fmt: skip
    assert results[0]["cost"]["bits_per_weight"] == results[2]["cost"]["bits_per_weight"]
    from safetensors.torch import load_file

    stored = load_file(str(out / "weights.safetensors"))
    name = "model.layers.0.mlp.down_proj"
    codes = stored[name].reshape(-1, 32) / stored[f"{name}.scale"] + stored[f"{name}.zero"]
    assert torch.allclose(codes, codes.round(), atol=1e-3) and codes.round().min() >= 0 and codes.round().max() <= 3
    assert main(args) == 2  # the same directory is not overwritten

    # the polished model exports with its trained weights and grids: compressed-tensors decompresses to them exactly
    from compressed_tensors.compressors import BaseCompressor
    from compressed_tensors.quantization import QuantizationScheme
    from safetensors import safe_open

    capsys.readouterr()
    exported = tmp_path / "exported"
    assert main(["export", "--polished", str(out), "--arena", str(tiny_polish_arena), "--format", "compressed-tensors", "--out", str(exported)]) == 0
    metadata = json.loads((exported / "agentqat-export.json").read_text())
    assert metadata["figures"]["perplexity"] == pytest.approx(math.exp(sum(sum(r["quality"]["window_nll"]) for r in results[2:4]) / 4))
    group = next(iter(json.loads((exported / "config.json").read_text())["quantization_config"]["config_groups"].values()))
    scheme = QuantizationScheme.model_validate(group)
    with safe_open(str(exported / "model.safetensors"), "pt") as file:
        state = {key.removeprefix(f"{name}."): file.get_tensor(key) for key in file.keys() if key.startswith(f"{name}.")}
    state["weight_scale"] = state["weight_scale"].to(torch.float32)
    decompressed = BaseCompressor.get_value_from_registry(scheme.format).decompress(state, scheme)["weight"]
    assert torch.equal(decompressed, stored[name])


@pytest.mark.parametrize(
    "args, message",
    [
        (["polish"], "polish needs --best"),
        (["polish", "--best"], "--best needs the run directory"),
        (["polish", "/no/such/run", "--best"], "is not a run directory"),
        (["polish", "--strategy", "/no/such.json"], "no such file"),
        (["polish", "--strategy", "x.json", "--windows", "0"], "at least 1"),
    ],
)
def test_polish_errors_are_one_line(args, message, capsys):
    assert main(args) == 2
    error = capsys.readouterr().err.strip()
    assert message in error and "\n" not in error


def test_the_ablation_polishes_every_combination_against_its_unpolished_strategy(tiny_polish_arena, tmp_path, capsys):
    out = tmp_path / "ablation"
    args = ["polish", "--ablate", "--bits", "2", "--arena", str(tiny_polish_arena), "--windows", "4", "--epochs", "1", "--weight-lr", "1e-3", "--out", str(out)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    rows = [line for line in printed.splitlines() if line.strip().startswith("│ 2")]
    switches = sorted(tuple(cell.strip() for cell in row.strip("│ ").split("│")[1:4]) for row in rows)
    assert switches == sorted((scales, order, curriculum) for scales in ("fp16", "pow2 learned") for order in ("natural", "sensitivity") for curriculum in ("on", "off"))
    recorded = (out / "ablation.jsonl").read_text()
    assert len(recorded.splitlines()) == 8
    # a rerun (on another thread count too) reads the recorded rows back and plays nothing; other settings are
    # refused, not mixed in
    assert main([*args, "--threads", "2"]) == 0
    assert (out / "ablation.jsonl").read_text() == recorded
    assert [line for line in capsys.readouterr().out.splitlines() if line.strip().startswith("│ 2")] == rows
    assert main([*args[:-2], "--epochs", "2", "--out", str(out)]) == 2
    assert "holds an ablation of other settings" in capsys.readouterr().err


def test_a_chain_computes_a_blocks_input_from_the_nearest_kept_state():
    from agentqat.layerwise import BlockInputs
    from agentqat.polish.chain import Chain

    class Add(torch.nn.Module):
        def __init__(self, value):
            super().__init__()
            self.value = value

        def forward(self, hidden, **kwargs):
            return hidden + self.value

    runs = []
    chain = Chain(BlockInputs(torch.zeros(2, 3, 4), {}, 2), lambda layer: runs.append(layer) or Add(10**layer))
    assert chain.state(3).flatten()[0] == 111 and runs == [0, 1, 2]
    chain.keep({3})
    assert chain.state(4).flatten()[0] == 1111 and runs == [0, 1, 2, 3]
    chain.changed(2)  # drops 3 and 4; a new state 4 starts from state 0 again
    assert chain.blocks_needed({4}) == {0, 1, 2, 3}


def test_a_block_the_training_leaves_worse_stays_as_the_strategy_quantizes_it(bench):
    loaded, windows, calibration, _ = bench
    resolved = resolve_strategy(parse_strategy(uniform(3)), loaded.facts)
    polished = polish_model(loaded.model, resolved, calibration.stats, windows[:4], PolishSettings(epochs=1, weight_lr=1.0))
    assert not any(block.kept for block in polished.blocks) and polished.weights == {}
