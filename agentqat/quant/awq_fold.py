"""AWQ inside GGML's types: AWQ's per-input-channel scales folded into the operation before each layer, so that the
model computes the same function and any GGUF type (llama-quantize's own rounding, or agentqat's GPTQ) quantizes the
scaled weights.

AWQ (Lin et al. 2023) scales salient input channels up before rounding: W diag(s) is rounded and the input divided
by s. A GGUF block has no place for s, but where a layer's input comes from an RMSNorm or from another linear layer,
1/s folds into that operation exactly, as AWQ's own `apply_scale` does:

    input norm -> q, k, v     norm weight / s, q/k/v columns * s (one s for the three: they read one input)
    MLP norm   -> gate, up    norm weight / s, gate/up columns * s
    up         -> down        up rows / s, down columns * s (act(gate) * up is linear in up)

v -> o is left out: with grouped-query attention (SmolLM2, Gemma 3) each of v's outputs feeds several heads, so one
s per o input cannot be divided out of v (AWQ skips v -> o when the shapes differ, too). Gemma's norms compute
x * (1 + w): there w becomes (1 + w) / s - 1. The embedding and the head are not touched.

Per group, s = mean|X|^alpha normalised as AWQ does (`agentqat.quant.awq.channel_scales`), alpha in ALPHAS chosen by
the group's summed proxy error tr(dW H dW^T), with dW = Q(W diag(s)) / s - W and Q the target type's rounding as
llama.cpp makes it with an importance matrix (`block_scales`, then the nearest table entry; the importance is the
scaled input's, diag(H) / s^2). alpha 0 (s = 1) is a candidate, so no group is worse on the proxy than unfolded.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from agentqat.engines.ggml_blocks import BLOCK
from agentqat.layerwise import decoder_layers
from agentqat.progress import Reporter, phase
from agentqat.quant.awq import ALPHAS, channel_scales
from agentqat.quant.base import LayerStats
from agentqat.quant.ggml_gptq import GPTQ_TYPES, TypeTable, block_scales
from agentqat.quant.proxy import proxy_error

FOLD_TYPES = tuple(t.type_name for t in GPTQ_TYPES)  # the 32-wide types without a minimum: Q4_0, Q5_0, Q8_0, IQ4_NL
MLP_NORMS = ("pre_feedforward_layernorm", "post_attention_layernorm")  # Gemma 3's MLP norm first, then Llama's


@dataclass(frozen=True)
class FoldGroup:
    """Layers that read one input (`consumers`) and the operation that makes it (`source`): an RMSNorm, or a linear
    layer whose output rows feed the consumers' columns."""

    source: str
    consumers: tuple[str, ...]


def fold_groups(model: nn.Module) -> list[FoldGroup]:
    """Returns the model's AWQ fold groups, three per decoder layer (see the module docstring)."""
    names = {id(module): name for name, module in model.named_modules()}
    groups = []
    for layer in decoder_layers(model):
        prefix = names[id(layer)]
        attention, mlp = f"{prefix}.self_attn", f"{prefix}.mlp"
        mlp_norm = next(name for name in MLP_NORMS if hasattr(layer, name))
        groups += [
            FoldGroup(f"{prefix}.input_layernorm", tuple(f"{attention}.{n}" for n in ("q_proj", "k_proj", "v_proj"))),
            FoldGroup(f"{prefix}.{mlp_norm}", (f"{mlp}.gate_proj", f"{mlp}.up_proj")),
            FoldGroup(f"{mlp}.up_proj", (f"{mlp}.down_proj",)),
        ]
    return groups


def round_in_type(weight: torch.Tensor, type_name: str, importance: torch.Tensor) -> torch.Tensor:
    """Returns `weight` [out, in] rounded into `type_name`'s blocks as llama.cpp rounds with an importance matrix:
    each block's scale by its search, then each weight's nearest table entry (float32 values)."""
    if type_name not in FOLD_TYPES:
        raise ValueError(f"{type_name} is not one of {', '.join(FOLD_TYPES)}")
    table = TypeTable(type_name)
    d = block_scales(weight, type_name, importance).repeat_interleave(BLOCK, dim=1)
    inverse = torch.where(d == 0, 0.0, 1.0 / torch.where(d == 0, 1.0, d))
    return d * table.values[table.nearest(weight * inverse)]


def best_scales(weights: list[torch.Tensor], stats: LayerStats, type_name: str) -> tuple[float, torch.Tensor, float, float]:
    """Returns the alpha with the least summed proxy error of `weights` (one input, `stats`) rounded in `type_name`
    after scaling, its scales s, that error and the error at alpha 0 (no scaling)."""
    hessian = stats.hessian.to(torch.float32)
    diagonal = hessian.diagonal().clamp_min(0)
    errors = []
    for alpha in ALPHAS:
        scales = channel_scales(stats.abs_mean, alpha)
        importance = diagonal / scales.square()
        errors.append(sum(proxy_error(w, round_in_type(w * scales, type_name, importance) / scales, hessian) for w in weights))
    best = min(range(len(ALPHAS)), key=errors.__getitem__)
    return ALPHAS[best], channel_scales(stats.abs_mean, ALPHAS[best]), errors[best], errors[ALPHAS.index(0.0)]


def _is_offset_norm(norm: nn.Module) -> bool:
    """Returns whether the norm computes x * (1 + w) (Gemma's RMSNorm) instead of x * w."""
    return type(norm).__name__.startswith("Gemma")


@torch.no_grad()
def _fold(model: nn.Module, group: FoldGroup, scales: torch.Tensor) -> None:
    """Divides the group's source by `scales` and multiplies its consumers' input columns by them, in place."""
    modules = dict(model.named_modules())
    source = modules[group.source]
    if isinstance(source, nn.Linear):
        source.weight.div_(scales[:, None].to(source.weight.dtype))
        if source.bias is not None:
            source.bias.div_(scales.to(source.bias.dtype))
    elif _is_offset_norm(source):
        source.weight.copy_((1 + source.weight.float()) / scales - 1)
    else:
        source.weight.div_(scales.to(source.weight.dtype))
    for name in group.consumers:
        consumer = modules[name].weight
        consumer.mul_(scales[None, :].to(consumer.dtype))


def fold_awq(
    model: nn.Module, stats: dict[str, LayerStats], type_name: str, reporter: Reporter | None = None
) -> tuple[list[dict], dict[str, torch.Tensor]]:
    """Folds AWQ's scales for `type_name` into `model` in place (the function it computes stays the same). Returns one
    record per group (its source, alpha and the proxy error with and without the scales) and the scales of every
    group folded (alpha > 0), by source. `stats` are the unfolded model's calibration statistics of every linear
    module's input (the phase "choosing AWQ scales", one step per group)."""
    if type_name not in FOLD_TYPES:
        raise ValueError(f"{type_name} is not one of {', '.join(FOLD_TYPES)}")
    modules = dict(model.named_modules())
    groups = fold_groups(model)
    records, folded = [], {}
    with phase(reporter, "choosing AWQ scales", total=len(groups), detail=f"{len(ALPHAS)} alphas a group, {type_name}") as step:
        for group in groups:
            weights = [modules[name].weight.detach().to(torch.float32) for name in group.consumers]
            alpha, scales, error, unscaled = best_scales(weights, stats[group.consumers[0]], type_name)
            if alpha > 0:
                _fold(model, group, scales)
                folded[group.source] = scales
            records.append({"source": group.source, "consumers": list(group.consumers), "alpha": alpha,
                            "proxy_error": error, "proxy_error_unscaled": unscaled})  # fmt: skip
            step()
    return records, folded
