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
    def __init__(self, width: int):
        self.gram = torch.zeros(width, width, dtype=torch.float64)
        self.abs_sum = torch.zeros(width, dtype=torch.float64)
        self.abs_max = torch.zeros(width, dtype=torch.float32)
        self.tokens = 0

    def add(self, x: torch.Tensor) -> None:
        x = x.reshape(-1, x.shape[-1]).to(torch.float32)
        self.gram += (x.T @ x).to(torch.float64)
        magnitude = x.abs()
        self.abs_sum += magnitude.sum(0).to(torch.float64)
        self.abs_max = torch.maximum(self.abs_max, magnitude.amax(0))
        self.tokens += x.shape[0]

    def stats(self) -> LayerStats:
        return LayerStats(
            hessian=(self.gram / self.tokens).to(torch.float32),
            abs_mean=(self.abs_sum / self.tokens).to(torch.float32),
            abs_max=self.abs_max,
            tokens=self.tokens,
        )


@torch.inference_mode()
def collect_stats(
    model: nn.Module, windows: torch.Tensor, batch_size: int = 2, reporter: Reporter | None = None
) -> dict[str, LayerStats]:
    """Returns LayerStats for every quantizable linear module, from the base model's forward on `windows`
    (reported as the phase "collecting calibration statistics", one step per window)."""
    linears = quantizable_linears(model)
    accumulators: dict[str, _Accumulator] = {}
    owner: dict[str, str] = {}  # module -> the module whose accumulator it shares
    batch_inputs: dict[int, tuple[torch.Tensor, str]] = {}  # id(input) -> (input kept alive, first reader)

    def hook(name: str):
        def record(_module: nn.Module, inputs: tuple) -> None:
            x = inputs[0]
            seen = batch_inputs.get(id(x))
            if seen is not None:
                owner.setdefault(name, seen[1])
                return
            batch_inputs[id(x)] = (x, name)
            owner.setdefault(name, name)
            accumulators.setdefault(name, _Accumulator(x.shape[-1])).add(x)

        return record

    handles = [module.register_forward_pre_hook(hook(name)) for name, module in linears.items()]
    count, tokens = windows.shape
    detail = f"{count} windows of {tokens} tokens through {len(linears)} linear modules"
    try:
        with phase(reporter, "collecting calibration statistics", total=count, detail=detail) as step:
            for batch in windows.split(batch_size):
                model(input_ids=batch)
                batch_inputs.clear()
                step(len(batch))
    finally:
        for handle in handles:
            handle.remove()
    shared = {name: acc.stats() for name, acc in accumulators.items()}
    return {name: shared[owner[name]] for name in linears}


def calibration_key(model_name: str, model_directory: Path | None, corpus_source: str, windows: torch.Tensor) -> str:
    """Returns a short hash identifying the model, the calibration tokens and the collection format."""
    digest = hashlib.sha256()
    digest.update(json.dumps([CALIBRATION_FORMAT, model_name, str(model_directory), corpus_source]).encode())
    digest.update(windows.numpy().tobytes())
    return digest.hexdigest()[:16]


def load_or_collect(model: nn.Module, key: str, windows: torch.Tensor, reporter: Reporter | None = None) -> Calibration:
    """Returns the calibration for `key` from the disk cache, collecting and saving it on the first call."""
    path = cache_dir() / "calibration" / f"{key}.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock"):
        if path.exists():
            return Calibration(key, _load(path))
        stats = collect_stats(model, windows, reporter=reporter)
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
