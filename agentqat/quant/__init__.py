"""Weight and activation quantizers. Importing this package registers every weight quantizer by name."""

from agentqat.quant import awq, bnb, fp8, gptq, hqq, rtn  # noqa: F401  (registration)
from agentqat.quant.activation import fake_quantize_activation, smoothing_scales
from agentqat.quant.base import (
    NEEDS_CALIBRATION,
    WEIGHT_QUANTIZERS,
    ActivationQuant,
    LayerStats,
    OutlierPolicy,
    WeightQuant,
    quantize_weight,
)
from agentqat.quant.outliers import outlier_mask, quantize_with_outliers
from agentqat.quant.proxy import proxy_error

__all__ = [
    "NEEDS_CALIBRATION",
    "WEIGHT_QUANTIZERS",
    "ActivationQuant",
    "LayerStats",
    "OutlierPolicy",
    "WeightQuant",
    "fake_quantize_activation",
    "outlier_mask",
    "proxy_error",
    "quantize_weight",
    "quantize_with_outliers",
    "smoothing_scales",
]
