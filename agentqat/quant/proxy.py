"""The layer-output proxy error that GPTQ and AWQ minimise."""

from __future__ import annotations

import torch


def proxy_error(weight: torch.Tensor, dequantized: torch.Tensor, hessian: torch.Tensor) -> float:
    """Returns tr(dW H dW^T) with dW = dequantized - weight: the output's squared error per calibration token."""
    delta = dequantized - weight
    return float(((delta @ hessian) * delta).sum())
