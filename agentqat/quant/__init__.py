"""Weight and activation quantizers. Importing this package registers every weight quantization method; the order
of the imports is the order of the formats and roundings in the strategy schema."""

from agentqat.quant import rtn, gptq, awq, hqq, bnb, fp8, llm_int8, ggml, ggml_engine, ggml_gptq  # noqa: F401, I001  (registration, in order)
from agentqat.quant.activation import fake_quantize_activation, smoothing_scales
from agentqat.quant.base import ActivationQuant, LayerStats, OutlierPolicy, WeightQuant
from agentqat.quant.outliers import outlier_mask, quantize_with_outliers
from agentqat.quant.proxy import proxy_error
from agentqat.quant.registry import METHODS, Method, Problem, method_of, quantize_weight, registered

__all__ = [
    "METHODS",
    "ActivationQuant",
    "LayerStats",
    "Method",
    "OutlierPolicy",
    "Problem",
    "WeightQuant",
    "fake_quantize_activation",
    "method_of",
    "outlier_mask",
    "proxy_error",
    "quantize_weight",
    "quantize_with_outliers",
    "registered",
    "smoothing_scales",
]
