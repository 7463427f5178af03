"""The `fake-quant` format: the base model with the arena's dequantized weights, as float32 safetensors.

Any engine that loads the base model loads it (transformers, vLLM), and it computes what the arena measured:
its quality is the arena's figure. It has none of the memory gain: every weight is a float again (float32, so
that the values are exactly the arena's; an engine may cast them to its own dtype on load).

SmoothQuant's input divisor s is folded into the weight itself (the arena computes (x / s) W'^T, which is
x (W' / s)^T), which is exact up to float rounding as long as the activations stay in float. Quantized
activations are something a plain checkpoint cannot hold: such strategies are an ExportError.
"""

from __future__ import annotations

from pathlib import Path

import torch

from agentqat.export.base import ExportError, ExportSource, register_exporter

FORMAT = "fake-quant"


def dense_weights(source: ExportSource) -> dict[str, torch.Tensor]:
    """Returns module name -> the float32 weight computing what the arena computed (divisors folded in);
    ExportError naming the modules whose activations the arena quantized."""
    quantized_inputs = [m.name for m in source.modules.values() if m.config.activation.bits != 16]
    if quantized_inputs:
        raise ExportError(
            FORMAT, "the arena quantized their input activations, which a dequantized checkpoint computes in float",
            quantized_inputs, "export with --format compressed-tensors, or drop the activation bits",
        )  # fmt: skip
    return {
        name: module.quantized if module.input_divisor is None else module.quantized / module.input_divisor[None, :]
        for name, module in source.modules.items()
    }


@register_exporter(FORMAT)
def export_fake_quant(source: ExportSource, out: Path) -> None:
    """Writes the base model with the dequantized weights (float32 safetensors), its config and tokenizer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    weights = dense_weights(source)
    model = AutoModelForCausalLM.from_pretrained(source.model_directory, dtype=torch.float32)
    with torch.no_grad():
        for name, weight in weights.items():
            model.get_submodule(name).weight.copy_(weight)
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(source.model_directory).save_pretrained(out)
