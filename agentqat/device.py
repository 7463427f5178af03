"""Where a worker computes: the device setting (cpu, cuda, cuda:N, auto), its compute dtype, and whether the model
is run whole on the device or layer by layer (agentqat.layerwise).

The rule for the base model's dtype: float32 on the CPU; on a CUDA device bfloat16 where the device has it (compute
capability 8.0 and up: A100, H100, RTX 30xx and later), float32 where it does not. fp16 is never the base model's
dtype (activations of some models, Gemma's among them, overflow it); a strategy's compute_dtype gene still makes its
quantized linear layers compute in fp16 or bf16 on any device. Quantizers compute in float32 on the device of the
weight they quantize; calibration statistics live where the weights live.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from torch import nn

from agentqat.defaults import DEVICE, DEVICE_PATTERN
from agentqat.errors import UserError
from agentqat.layerwise import HOST, decoder_layers
from agentqat.quant.base import LayerStats
from agentqat.strategy.calibration import Calibration


def parse_device(spec: str, setting: str = "--device") -> torch.device:
    """Returns the torch device `spec` names (auto: the first CUDA device when there is one, else the CPU); UserError
    when it is not cpu, cuda, cuda:N or auto, or names a CUDA device this machine does not have."""
    if not re.match(DEVICE_PATTERN, spec):
        raise UserError(f"{setting} {spec!r} is not a device", "use cpu, cuda, cuda:N or auto")
    if spec == "auto":
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    device = torch.device(spec)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"{setting} {spec}: this machine has no CUDA device (or this torch is built without CUDA)",
                            f"use {setting} cpu or auto, or install a CUDA build of PyTorch on a machine with a GPU")  # fmt: skip
        index = device.index or 0
        if index >= torch.cuda.device_count():
            raise UserError(f"{setting} {spec}: this machine has {torch.cuda.device_count()} CUDA device(s)",
                            f"use {setting} cuda:0 to cuda:{torch.cuda.device_count() - 1}")  # fmt: skip
        device = torch.device("cuda", index)
    return device


def compute_dtype(device: torch.device) -> torch.dtype:
    """Returns the base model's dtype on `device` (the module docstring's rule)."""
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


@dataclass(frozen=True)
class Placement:
    """Where a worker computes: the device, the model's dtype there, and whether decoder blocks take turns on the
    device (sequential: the blocks live on the host, everything else on the device)."""

    device: torch.device
    dtype: torch.dtype
    sequential: bool = False

    @property
    def weights(self) -> torch.device:
        """Returns the device where the decoder blocks' weights (and the quantizers' work on them) live."""
        return HOST if self.sequential else self.device


def placement(spec: str = DEVICE, sequential: bool = False, dtype: torch.dtype | None = None, setting: str = "--device") -> Placement:
    """Returns the placement of a device setting (`dtype`: the model's dtype, by default the rule of `compute_dtype`)."""
    device = parse_device(spec, setting)
    return Placement(device, dtype or compute_dtype(device), sequential)


def place_model(model: nn.Module, where: Placement) -> nn.Module:
    """Moves `model` (in place) to `where`: whole onto the device, or (sequential) all but its decoder blocks, which
    stay on the host (tied weights stay tied: tensors move by swapping their data)."""
    model.to(dtype=where.dtype)
    if not where.sequential:
        return model.to(where.device)
    layers = decoder_layers(model).to(HOST)
    inside = {id(module) for module in layers.modules()}
    for module in model.modules():
        if id(module) not in inside:
            module._apply(lambda tensor: tensor.to(where.device), recurse=False)
    return model


def stats_on(stats: LayerStats, device: torch.device) -> LayerStats:
    """Returns `stats` with its tensors on `device`."""
    return LayerStats(stats.hessian.to(device), stats.abs_mean.to(device), stats.abs_max.to(device), stats.tokens)


def calibration_on(calibration: Calibration, device: torch.device) -> Calibration:
    """Returns `calibration` with its statistics on `device`, modules that shared one statistics object sharing it still."""
    moved: dict[int, LayerStats] = {}
    for stats in calibration.stats.values():
        moved.setdefault(id(stats), stats_on(stats, device))
    return Calibration(calibration.key, {name: moved[id(stats)] for name, stats in calibration.stats.items()})
