"""The device check's measurements (bench/device_check.sh runs this): CPU-vs-device agreement on the tiny test Llama,
and throughput and memory of a random-initialised Llama on the device. Needs agentqat's source tree on the path and
its dependencies (torch, transformers, safetensors, pydantic, filelock); no model download, no corpus, no tokenizer.

    python bench/device_check.py --device cuda --out DIR [--big llama-1b|tiny]

agreement   four strategies (RTN W4 g64 read from a level database, GPTQ W4 g64, AWQ W3 g32, HQQ W3 g32; calibration
            statistics collected on each device) on the tiny Llama (weights N(0, 0.25^2), 8 windows of 64 random
            tokens): KL on the CPU in float32 against the device in float32, in its own dtype (bf16 where it has it)
            and layer by layer; the largest relative and absolute differences
throughput  on the random Llama: references and one comparison (tokens per second), calibration on 2 windows, RTN of
            every module, GPTQ of one block, the layer-by-layer comparison; peak device memory
Writes device_check.json into --out.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from agentqat.arena.quality import compare, reference_of  # noqa: E402
from agentqat.device import calibration_on, place_model, placement  # noqa: E402
from agentqat.levels import level_config, open_database  # noqa: E402
from agentqat.models import model_facts, quantizable_linears  # noqa: E402
from agentqat.strategy.apply import strategy_applied  # noqa: E402
from agentqat.strategy.calibration import Calibration, collect_stats  # noqa: E402
from agentqat.strategy.document import WeightGene, parse_strategy  # noqa: E402
from agentqat.strategy.resolve import resolve_strategy  # noqa: E402

STRATEGIES = {
    "rtn-w4-g64-level": {"bits": 4, "group_size": 64, "symmetric": False, "rounding": "rtn"},
    "gptq-w4-g64": {"bits": 4, "group_size": 64, "symmetric": False, "rounding": "gptq"},
    "awq-w3-g32": {"bits": 3, "group_size": 32, "rounding": "awq"},
    "hqq-w3-g32": {"bits": 3, "group_size": 32, "rounding": "hqq"},
}
BIG = {
    "llama-1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                     num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=True),
    "tiny": dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=512, tie_word_embeddings=True),
}  # fmt: skip


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(device: torch.device, work):
    _sync(device)
    began = time.perf_counter()
    value = work()
    _sync(device)
    return value, time.perf_counter() - began


def strategy_kls(model, windows, spec: str, sequential: bool, dtype: torch.dtype | None) -> dict[str, float]:
    """Returns each strategy's KL with the model placed on `spec` (whole or layer by layer, in `dtype`)."""
    where = placement(spec, sequential, dtype)
    place_model(model, where)
    facts = model_facts(model, "tiny-device-check")
    reference = reference_of(model, windows, sequential=sequential)
    stats = collect_stats(model, windows, sequential=sequential)
    calibration = calibration_on(Calibration(f"device-check-{where.dtype}", stats), where.weights)
    level = level_config(WeightGene(**STRATEGIES["rtn-w4-g64-level"]))
    database = open_database(model, "tiny-device-check", Calibration(calibration.key, {}), (level,), device=where.weights)
    kls = {}
    for name, weight in STRATEGIES.items():
        resolved = resolve_strategy(parse_strategy({"name": name, "default": {"weight": weight}}), facts)
        with strategy_applied(model, resolved, calibration, None, database):
            kls[name] = compare(model, reference, sequential=sequential).kl.mean().item()
    return kls


def agreement(spec: str) -> dict:
    from tiny_models import build_tiny_llama

    windows = torch.randint(0, 500, (8, 64), generator=torch.Generator().manual_seed(0))
    model = build_tiny_llama(weight_std=0.25).eval()
    runs = {"cpu-float32": strategy_kls(model, windows, "cpu", False, torch.float32)}
    runs[f"{spec} float32"] = strategy_kls(model, windows, spec, False, torch.float32)
    runs[f"{spec} float32 sequential"] = strategy_kls(model, windows, spec, True, torch.float32)
    rule = placement(spec).dtype
    runs[f"{spec} {str(rule).removeprefix('torch.')} (the rule's dtype)"] = strategy_kls(model, windows, spec, False, rule)
    base = runs["cpu-float32"]
    differences = {
        run: {"max_abs": max(abs(kls[n] - base[n]) for n in base), "max_rel": max(abs(kls[n] - base[n]) / base[n] for n in base)}
        for run, kls in runs.items() if run != "cpu-float32"
    }  # fmt: skip
    return {"kl": runs, "against_cpu_float32": differences}


def throughput(spec: str, shape: str) -> dict:
    from transformers import LlamaConfig, LlamaForCausalLM

    where = placement(spec)
    device = where.device
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = LlamaForCausalLM(LlamaConfig(**BIG[shape])).eval()
    parameters = sum(p.numel() for p in model.parameters())
    place_model(model, where)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    windows = torch.randint(0, BIG[shape]["vocab_size"], (4, 512), generator=torch.Generator().manual_seed(0))
    tokens = windows.numel()
    reference, reference_s = _timed(device, lambda: reference_of(model, windows))
    _, compare_s = _timed(device, lambda: compare(model, reference))
    stats, calibration_s = _timed(device, lambda: collect_stats(model, windows[:2]))
    facts = model_facts(model, shape)
    rtn = resolve_strategy(parse_strategy({"name": "rtn", "default": {"weight": STRATEGIES["rtn-w4-g64-level"]}}), facts)

    def quantize_all():
        with strategy_applied(model, rtn, None):
            pass

    _, rtn_s = _timed(device, quantize_all)
    from agentqat.quant.registry import quantize_weight

    gptq = level_config(WeightGene(**STRATEGIES["gptq-w4-g64"])).weight
    block = {name: linear for name, linear in quantizable_linears(model).items() if ".layers.0." in name}
    stats = calibration_on(Calibration("big", stats), where.weights).stats
    _, gptq_block_s = _timed(device, lambda: [quantize_weight(linear.weight.float(), gptq, stats[name]) for name, linear in block.items()])
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    layered = placement(spec, sequential=True)
    model.to("cpu")
    place_model(model, layered)
    _, sequential_s = _timed(device, lambda: compare(model, reference, sequential=True))
    return {
        "shape": shape, "parameters": parameters, "device": str(device), "dtype": str(where.dtype), "tokens": tokens,
        "reference_s": reference_s, "compare_s": compare_s, "compare_tokens_per_s": tokens / compare_s,
        "calibration_2_windows_s": calibration_s, "rtn_all_modules_s": rtn_s, "gptq_one_block_s": gptq_block_s,
        "gptq_level_estimate_s": gptq_block_s * facts.num_layers, "sequential_compare_s": sequential_s,
        "peak_device_memory_bytes": peak,
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--big", default="llama-1b", choices=tuple(BIG))
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as cache:
        import os

        os.environ["AGENTQAT_CACHE_DIR"] = cache  # level files and nothing else, deleted afterwards
        started = time.perf_counter()
        result = {"torch": torch.__version__, "cuda": torch.version.cuda, "agreement": agreement(args.device)}
        print(json.dumps(result["agreement"]["against_cpu_float32"], indent=2), flush=True)
        result["throughput"] = throughput(args.device, args.big)
        result["seconds"] = time.perf_counter() - started
    (args.out / "device_check.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["throughput"], indent=2))


if __name__ == "__main__":
    main()
