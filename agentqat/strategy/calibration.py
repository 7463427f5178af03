"""Calibration statistics of every linear module's input, collected once per model and corpus and cached.

Modules that read the same tensor (q/k/v, gate/up) share one LayerStats object, in memory and on disk.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, fields
from pathlib import Path

import torch
from filelock import FileLock
from torch import nn

from agentqat.defaults import cache_dir
from agentqat.layerwise import HOST, decoder_layers, model_device, run_layers
from agentqat.models import quantizable_linears
from agentqat.progress import Reporter, phase
from agentqat.quant.base import LayerStats

CALIBRATION_FORMAT = 1  # bump when what is collected changes, so old caches are not reused


@dataclass(frozen=True)
class Calibration:
    """Per-module input statistics and the key that identifies the data they came from."""

    key: str
    stats: dict[str, LayerStats]


class _Accumulator:
    """Sums of one input's statistics, kept on `device` (the input's products are computed on the input's device)."""

    def __init__(self, width: int, device: torch.device):
        self.gram = torch.zeros(width, width, dtype=torch.float64, device=device)
        self.abs_sum = torch.zeros(width, dtype=torch.float64, device=device)
        self.abs_max = torch.zeros(width, dtype=torch.float32, device=device)
        self.tokens = 0

    def add(self, x: torch.Tensor) -> None:
        x = x.reshape(-1, x.shape[-1]).to(torch.float32)
        device = self.gram.device
        self.gram += (x.T @ x).to(device, torch.float64)
        magnitude = x.abs()
        self.abs_sum += magnitude.sum(0).to(device, torch.float64)
        self.abs_max = torch.maximum(self.abs_max, magnitude.amax(0).to(device))
        self.tokens += x.shape[0]

    def stats(self) -> LayerStats:
        """Returns the statistics, on the CPU."""
        return LayerStats(
            hessian=(self.gram / self.tokens).to("cpu", torch.float32),
            abs_mean=(self.abs_sum / self.tokens).to("cpu", torch.float32),
            abs_max=self.abs_max.cpu(),
            tokens=self.tokens,
        )


@torch.inference_mode()
def collect_stats(
    model: nn.Module, windows: torch.Tensor, batch_size: int = 2, reporter: Reporter | None = None, sequential: bool = False
) -> dict[str, LayerStats]:
    """Returns LayerStats (on the CPU) for every quantizable linear module, from the base model's forward on `windows`
    on the model's device (reported as the phase "collecting calibration statistics", one step per window), or
    `sequential`ly, layer by layer (one step per decoder block; the sums are kept on the host, not the device)."""
    linears = quantizable_linears(model)
    accumulators: dict[str, _Accumulator] = {}
    owner: dict[str, str] = {}  # module -> the module whose accumulator it shares
    # id(input) -> (input kept alive, first reader), emptied before every block call: modules reading one input
    # (q/k/v, gate/up) read it within one call of their block.
    block_inputs: dict[int, tuple[torch.Tensor, str]] = {}
    store = HOST if sequential else None

    def hook(name: str):
        def record(_module: nn.Module, inputs: tuple) -> None:
            x = inputs[0]
            seen = block_inputs.get(id(x))
            if seen is not None:
                owner.setdefault(name, seen[1])
                return
            block_inputs[id(x)] = (x, name)
            owner.setdefault(name, name)
            accumulators.setdefault(name, _Accumulator(x.shape[-1], store or x.device)).add(x)

        return record

    handles = [module.register_forward_pre_hook(hook(name)) for name, module in linears.items()]
    handles += [block.register_forward_pre_hook(lambda *_: block_inputs.clear()) for block in decoder_layers(model)]
    count, tokens = windows.shape
    layers = len(decoder_layers(model))
    detail = f"{count} windows of {tokens} tokens through {len(linears)} linear modules" + f", {layers} blocks in turn" * sequential
    try:
        with phase(reporter, "collecting calibration statistics", total=layers if sequential else count, detail=detail) as step:
            if sequential:
                run_layers(model, windows, batch_size, after_layer=lambda _index: step())
            else:
                for batch in windows.split(batch_size):
                    model(input_ids=batch.to(model_device(model)), use_cache=False)
                    step(len(batch))
    finally:
        block_inputs.clear()
        for handle in handles:
            handle.remove()
    shared = {name: acc.stats() for name, acc in accumulators.items()}
    return {name: shared[owner[name]] for name in linears}


def calibration_key(
    model_name: str, model_directory: Path | None, corpus_source: str, windows: torch.Tensor, dtype: torch.dtype = torch.float32
) -> str:
    """Returns a short hash identifying the model, the calibration tokens, the collection format and (other than
    float32, so that float32 keys are the ones they were before) the dtype the model computed in."""
    digest = hashlib.sha256()
    dtype_name = [] if dtype == torch.float32 else [str(dtype)]
    digest.update(json.dumps([CALIBRATION_FORMAT, model_name, str(model_directory), corpus_source, *dtype_name]).encode())
    digest.update(windows.numpy().tobytes())
    return digest.hexdigest()[:16]


def load_or_collect(
    model: nn.Module, key: str, windows: torch.Tensor, reporter: Reporter | None = None, sequential: bool = False
) -> Calibration:
    """Returns the calibration for `key` from the disk cache (on the CPU), collecting (whole or `sequential`: the same
    statistics) and saving it on the first call."""
    path = cache_dir() / "calibration" / f"{key}.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock"):
        if path.exists():
            return Calibration(key, _load(path))
        stats = collect_stats(model, windows, reporter=reporter, sequential=sequential)
        _save(stats, path)
    return Calibration(key, stats)


def _save(stats: dict[str, LayerStats], path: Path) -> None:
    unique: dict[int, LayerStats] = {id(s): s for s in stats.values()}
    payload = {
        "groups": {str(k): {f.name: getattr(s, f.name) for f in fields(s)} for k, s in unique.items()},
        "modules": {name: str(id(s)) for name, s in stats.items()},
    }
    staging = path.with_suffix(".tmp")
    torch.save(payload, staging)
    staging.replace(path)


def _load(path: Path) -> dict[str, LayerStats]:
    payload = torch.load(path, weights_only=True)
    groups = {key: LayerStats(**fields) for key, fields in payload["groups"].items()}
    return {name: groups[key] for name, key in payload["modules"].items()}
