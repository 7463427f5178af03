"""Activation fake quantization (dynamic, computed per forward) and SmoothQuant's migration scales: the built-in
activation formats (int, fp8_e4m3) and SmoothQuant, registered as `agentqat.quant.schemes` objects."""

from __future__ import annotations

import torch

from agentqat.quant.base import ActivationQuant
from agentqat.quant.schemes import ACTIVATIONS, TRANSFORMS, ActivationScheme, InputTransform

FP8_E4M3_MAX = 448.0
_TINY = 1e-12  # absmax floor: an all-zero token stays zero instead of dividing by zero


def smoothing_scales(act_abs_max: torch.Tensor, weight: torch.Tensor, alpha: float) -> torch.Tensor:
    """Returns SmoothQuant's per-input-channel scales s = max|X|^alpha / max|W|^(1 - alpha), in [1e-5, 1e5].

    The layer then computes (X / s) @ (W * s).T, which equals X @ W.T in exact arithmetic.
    """
    activation = act_abs_max.to(torch.float32).clamp_min(1e-5)
    weight_max = weight.abs().amax(0).to(torch.float32).clamp_min(1e-5)
    return (activation.pow(alpha) / weight_max.pow(1.0 - alpha)).clamp(1e-5, 1e5)


def _absmax(x: torch.Tensor, granularity: str) -> torch.Tensor:
    """Returns max |x| per token (last dimension) or over the whole tensor, floored at _TINY."""
    if granularity == "per_token":
        return x.abs().amax(-1, keepdim=True).clamp_min(_TINY)
    return x.abs().amax().clamp_min(_TINY)


def _int(x: torch.Tensor, config: ActivationQuant) -> torch.Tensor:
    """Returns `x` on the symmetric absmax grid with codes in [-(2^(b-1) - 1), 2^(b-1) - 1]."""
    if not 2 <= config.bits <= 8:
        raise ValueError(f"integer activations take 2 to 8 bits, got {config.bits}")
    qmax = 2 ** (config.bits - 1) - 1
    scale = _absmax(x, config.granularity) / qmax
    return torch.clamp(torch.round(x / scale), -qmax, qmax) * scale


def _fp8(x: torch.Tensor, config: ActivationQuant) -> torch.Tensor:
    """Returns `x` through float8_e4m3fn with the absmax mapped to 448."""
    if config.bits != 8:
        raise ValueError(f"fp8_e4m3 activations are 8-bit, got bits={config.bits}")
    scale = _absmax(x, config.granularity) / FP8_E4M3_MAX
    scaled = torch.clamp(x / scale, -FP8_E4M3_MAX, FP8_E4M3_MAX)
    return scaled.to(torch.float8_e4m3fn).to(torch.float32) * scale


ACTIVATIONS.register(ActivationScheme("int", _int, bits=(2, 3, 4, 5, 6, 7, 8)))
ACTIVATIONS.register(ActivationScheme("fp8_e4m3", _fp8, bits=(8,)))
SMOOTHQUANT = TRANSFORMS.register(InputTransform(
    name="smoothquant", field="smooth_alpha", divisor=smoothing_scales,
    stored_bits=lambda in_features: 16 * in_features,  # an fp16 divisor per input channel
    deploy_targets=frozenset({"fake-quant"}), exports=frozenset({"fake-quant"}), label="SmoothQuant",
))  # fmt: skip


def fake_quantize_activation(x: torch.Tensor, config: ActivationQuant) -> torch.Tensor:
    """Returns `x` [..., in] fake-quantized as the config's registered format says, in x's dtype (`x` itself for
    bits 16)."""
    if config.bits == 16:
        return x
    return ACTIVATIONS.get(config.format).quantize(x.to(torch.float32), config).to(x.dtype)
