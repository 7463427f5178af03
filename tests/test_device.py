"""The device setting (agentqat.device) and the layer-by-layer path (agentqat.layerwise), on the tiny Llama.

The same strategies are played on the CPU and, where this machine has CUDA, on the GPU: every match runs the model,
its calibration statistics, the quantizers (GPTQ from the level database, AWQ, HQQ and RTN with outliers on the fly)
and the evaluation on the arena's device. Tolerances: CUDA in float32 within 1e-3 of the CPU's KL relative (plus
1e-6 absolute: reductions run in another order); CUDA in bf16 (the rule's dtype on a GPU that has it) within 10%
relative plus 2e-3 absolute. The layer-by-layer path gives the whole model's logits: KL within 1e-6 relative.
Where there is no CUDA (this project's machines), the CUDA tests skip and the CPU versions of the same code path run.
"""

from __future__ import annotations

import pytest
import torch

from agentqat import device as device_module
from agentqat.arena.config import Arena, Levels, Stage
from agentqat.arena.match import Workbench
from agentqat.arena.quality import compare, reference_of, window_nll
from agentqat.arena.request import MatchRequest
from agentqat.cli import main
from agentqat.data import sample_windows
from agentqat.device import parse_device, placement
from agentqat.errors import UserError
from agentqat.layerwise import decoder_layers
from agentqat.models import load_model
from agentqat.strategy.calibration import collect_stats
from agentqat.strategy.document import WeightGene

CUDA = torch.cuda.is_available()
NO_CUDA = "this machine has no CUDA device: the CPU version of this test runs instead"

STRATEGIES = {
    "gptq-w4-level": {"name": "gptq4", "default": {"weight": {"bits": 4, "group_size": 32, "rounding": "gptq"}}},
    "awq-w3": {"name": "awq3", "default": {"weight": {"bits": 3, "group_size": 32, "rounding": "awq"}}},
    "hqq-w3": {"name": "hqq3", "default": {"weight": {"bits": 3, "group_size": 32, "rounding": "hqq"}}},
    "rtn-w3-outliers": {"name": "rtn3o", "default": {"weight": {"bits": 3, "group_size": 32},
                                                      "outliers": {"method": "keep_fp16", "fraction": 0.01}}},
}  # fmt: skip


def arena_on(model_dir, corpus, device: str = "cpu", sequential: bool = False) -> Arena:
    return Arena(
        name="tiny-device", model=str(model_dir), corpus=str(corpus), window_tokens=64, calibration_windows=4,
        bits_budget=5.0, device=device, sequential=sequential, stages=(Stage(name="screen", windows=6),),
        levels=Levels(ladder=(WeightGene(bits=4, group_size=32, rounding="gptq"), WeightGene(bits=8, group_size=0))),
    )  # fmt: skip


def kls(arena: Arena) -> dict[str, float]:
    """Returns each strategy's KL on the arena's screening windows."""
    bench = Workbench(arena)
    bench.prepare(0)
    results = {name: bench.play(MatchRequest(document, "screen", 0)) for name, document in STRATEGIES.items()}
    assert all(result.outcome == "ok" for result in results.values()), {n: r.message for n, r in results.items()}
    return {name: result.quality.kl for name, result in results.items()}


@pytest.fixture(scope="module")
def cpu_kls(sensitive_llama_dir, small_corpus_file):
    return kls(arena_on(sensitive_llama_dir, small_corpus_file))


def test_device_settings_parse_and_missing_cuda_is_one_clear_line():
    assert parse_device("cpu") == torch.device("cpu")
    assert parse_device("auto") == torch.device("cuda:0" if CUDA else "cpu")
    with pytest.raises(UserError, match="is not a device"):
        parse_device("gpu")
    assert placement("cpu").dtype == torch.float32 and placement("cpu", sequential=True).weights == torch.device("cpu")
    if not CUDA:
        with pytest.raises(UserError, match="--device cuda:1: this machine has no CUDA device") as error:
            parse_device("cuda:1")
        assert "use --device cpu or auto" in str(error.value)


def test_cli_refuses_a_missing_cuda_device_with_exit_2(capsys):
    if CUDA:
        pytest.skip("this machine has CUDA: the refusal is for machines without it")
    assert main(["info", "--device", "cuda"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--device cuda" in err[0] and "--device cpu" in err[0]


def test_the_arena_records_a_device_only_when_it_is_not_the_default(sensitive_llama_dir, small_corpus_file):
    default = arena_on(sensitive_llama_dir, small_corpus_file).model_dump()
    assert "device" not in default and "sequential" not in default
    assert arena_on(sensitive_llama_dir, small_corpus_file, "auto", True).model_dump()["device"] == "auto"
    with pytest.raises(ValueError, match="cloze and qa"):
        Arena(name="x", sequential=True, stages=(Stage(name="s", windows=1, cloze=True),))


def test_cpu_named_explicitly_plays_what_the_default_plays(cpu_kls, sensitive_llama_dir, small_corpus_file):
    """The CPU version of the CUDA agreement test: the same code path with device="cpu" named (and "auto" here)."""
    assert kls(arena_on(sensitive_llama_dir, small_corpus_file, "cpu" if CUDA else "auto")) == cpu_kls


def test_layer_by_layer_plays_what_the_whole_model_plays(cpu_kls, sensitive_llama_dir, small_corpus_file):
    sequential = kls(arena_on(sensitive_llama_dir, small_corpus_file, sequential=True))
    assert sequential == pytest.approx(cpu_kls, rel=1e-6, abs=1e-9)


def test_layer_by_layer_logits_and_statistics_equal_the_whole_models(sensitive_llama_dir):
    model = load_model(str(sensitive_llama_dir)).model
    windows = sample_windows(torch.arange(5000) % 500, 64, 7, 0)  # 7 windows: a last batch smaller than the rest
    assert torch.allclose(window_nll(model, windows, 4, sequential=True), window_nll(model, windows, 4), atol=1e-6)
    reference = reference_of(model, windows)
    assert torch.equal(reference_of(model, windows, sequential=True).probs, reference.probs)
    assert torch.allclose(compare(model, reference, sequential=True).kl, compare(model, reference).kl, rtol=1e-6, atol=1e-9)
    whole, layered = collect_stats(model, windows), collect_stats(model, windows, sequential=True)
    assert whole.keys() == layered.keys() and len({id(s) for s in layered.values()}) == len({id(s) for s in whole.values()})
    for name in whole:
        assert torch.allclose(whole[name].hessian, layered[name].hessian, rtol=1e-6, atol=1e-8), name
    assert all(p.device.type == "cpu" for p in decoder_layers(model).parameters())


@pytest.mark.skipif(not CUDA, reason=NO_CUDA)
@pytest.mark.parametrize("dtype", ["float32", "bf16"])
def test_cuda_plays_what_the_cpu_plays(cpu_kls, sensitive_llama_dir, small_corpus_file, monkeypatch, dtype):
    if dtype == "float32":
        monkeypatch.setattr(device_module, "compute_dtype", lambda _device: torch.float32)
        tolerance = dict(rel=1e-3, abs=1e-6)
    elif not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bf16: the rule keeps float32 on it")
    else:
        tolerance = dict(rel=0.1, abs=2e-3)
    bench_kls = kls(arena_on(sensitive_llama_dir, small_corpus_file, "cuda"))
    assert bench_kls == pytest.approx(cpu_kls, **tolerance)


@pytest.mark.skipif(not CUDA, reason=NO_CUDA)
def test_cuda_layer_by_layer_keeps_blocks_on_the_host(cpu_kls, sensitive_llama_dir, small_corpus_file, monkeypatch):
    monkeypatch.setattr(device_module, "compute_dtype", lambda _device: torch.float32)
    bench = Workbench(arena_on(sensitive_llama_dir, small_corpus_file, "cuda", sequential=True))
    assert bench.loaded.model.get_input_embeddings().weight.device.type == "cuda"
    assert all(p.device.type == "cpu" for p in decoder_layers(bench.loaded.model).parameters())
    assert kls(arena_on(sensitive_llama_dir, small_corpus_file, "cuda", sequential=True)) == pytest.approx(cpu_kls, rel=1e-3, abs=1e-6)
