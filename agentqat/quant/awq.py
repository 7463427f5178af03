"""AWQ (Lin et al. 2023): scale salient input channels up before rounding, by a searched power of their activations.

For alpha in ALPHAS the per-input-channel scale is s = mean|X|^alpha, normalised by sqrt(max(s) * min(s)) as AWQ
does; W diag(s) is rounded with RTN and divided by s again. The alpha with the least output-error proxy
tr(dW H dW^T) wins (alpha 0 is plain RTN, so AWQ is never worse than RTN on the proxy). The search runs with
the config's clip ratio (clip 1.0 when the config asks for "mse"); the final rounding applies the config's
clip, "mse" included. The result is W_q / s, the weight the model computes with once 1/s is folded into the
op before the layer. Each module gets its own s (AWQ proper shares one s between modules that read the same input).
"""

from __future__ import annotations

from dataclasses import replace

import torch

from agentqat.quant.base import IntCodes, LayerStats, WeightQuant
from agentqat.quant.grid import dequantize, int_grid_method
from agentqat.quant.proxy import proxy_error
from agentqat.quant.registry import register
from agentqat.quant.rtn import rtn, rtn_codes

ALPHAS: tuple[float, ...] = tuple(step / 20 for step in range(20))  # 0.0 to 0.95


def channel_scales(abs_mean: torch.Tensor, alpha: float) -> torch.Tensor:
    """Returns AWQ's per-input-channel scales mean|X|^alpha, normalised so that max * min = 1."""
    scales = abs_mean.to(torch.float32).pow(alpha).clamp_min(1e-4)
    return scales / (scales.max() * scales.min()).sqrt()


def _scaled_rtn(weight: torch.Tensor, config: WeightQuant, scales: torch.Tensor) -> torch.Tensor:
    """Returns RTN of W diag(scales), divided by the scales again."""
    return rtn(weight * scales, config) / scales


def awq_codes(weight: torch.Tensor, config: WeightQuant, stats: LayerStats | None) -> IntCodes:
    """Returns the codes and grids of RTN of W diag(s) with the best alpha on the proxy error, s as the divisor."""
    search_config = replace(config, clip=1.0) if config.clip == "mse" else config
    hessian = stats.hessian.to(torch.float32)
    errors = [
        proxy_error(weight, _scaled_rtn(weight, search_config, channel_scales(stats.abs_mean, alpha)), hessian)
        for alpha in ALPHAS
    ]
    best_alpha = ALPHAS[min(range(len(ALPHAS)), key=errors.__getitem__)]
    scales = channel_scales(stats.abs_mean, best_alpha)
    return rtn_codes(weight * scales, config)._replace(divisor=scales)


def awq(weight: torch.Tensor, config: WeightQuant, stats: LayerStats | None) -> torch.Tensor:
    """Returns the effective weight W_q / s of AWQ with the best alpha on the proxy error."""
    return dequantize(awq_codes(weight, config, stats))


# Served as fake quantization only: each module's own 1/s cannot be folded into an input that q/k/v (or gate/up)
# share, and no engine takes a per-module input scale.
register(int_grid_method("awq", awq, frozenset({"fake-quant"}), needs_calibration=True, codes=awq_codes))
