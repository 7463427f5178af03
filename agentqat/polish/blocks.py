"""Decoder blocks taken one at a time: the first block's inputs captured from the model, a block run on hidden
states, and a block's copy with the strategy's quantized modules (frozen) or trainable `QatLinear`s in them.

Nothing here changes the model: every block that is quantized or trained is a deep copy of one block.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn

from agentqat.models import quantizable_linears
from agentqat.polish.ggml_grid import NO_ENGINE, EngineLevels, GgmlQatLinear
from agentqat.polish.ste import QatLinear
from agentqat.quant.base import INT_GRID, LayerStats
from agentqat.quant.registry import method_of
from agentqat.quant.schemes import keeps_outliers, transforms_of
from agentqat.strategy.apply import COMPUTE_DTYPES, QuantizedLinear, quantize_module
from agentqat.strategy.resolve import ModuleConfig, ResolvedStrategy

_LAYERS = re.compile(r"^(.*\.layers)\.(\d+)\.(.+)$")


class _Captured(Exception):
    pass


@dataclass(frozen=True)
class BlockInputs:
    """The first decoder block's inputs: hidden states [windows, tokens, hidden] and the keyword arguments the
    model passes every block for one batch of `batch` windows (rotary embeddings, attention mask)."""

    hidden: torch.Tensor
    kwargs: dict
    batch: int


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """Returns the model's decoder blocks (the module list holding the quantizable linears)."""
    name = next(iter(quantizable_linears(model)))
    return model.get_submodule(_LAYERS.match(name).group(1))


def block_modules(model: nn.Module, layer: int) -> dict[str, str]:
    """Returns the quantizable linears of decoder block `layer`: model name -> name inside the block."""
    names = {}
    for name in quantizable_linears(model):
        match = _LAYERS.match(name)
        if int(match.group(2)) == layer:
            names[name] = match.group(3)
    return names


@torch.no_grad()
def capture_inputs(model: nn.Module, windows: torch.Tensor, batch: int) -> BlockInputs:
    """Returns the first block's inputs on `windows`, run through the model's embeddings in batches of `batch`."""
    first = decoder_layers(model)[0]
    hidden, kwargs = [], {}

    def catch(_module, args, keywords):
        hidden.append(args[0] if args else keywords["hidden_states"])
        kwargs.update({k: v for k, v in keywords.items() if k not in ("hidden_states", "past_key_values", "use_cache")})
        raise _Captured

    handle = first.register_forward_pre_hook(catch, with_kwargs=True)
    try:
        for part in windows.split(batch):
            try:
                model(input_ids=part, use_cache=False)
            except _Captured:
                pass
    finally:
        handle.remove()
    return BlockInputs(torch.cat(hidden).to(torch.float32), kwargs, batch)


def batch_kwargs(inputs: BlockInputs, size: int) -> dict:
    """Returns the block keyword arguments for a batch of `size` windows (tensors cut along the batch axis)."""

    def cut(value):
        if isinstance(value, torch.Tensor) and value.dim() and value.shape[0] == inputs.batch:
            return value[:size]
        if isinstance(value, tuple):
            return tuple(cut(v) for v in value)
        return value

    return {key: cut(value) for key, value in inputs.kwargs.items()}


def run_block(block: nn.Module, hidden: torch.Tensor, inputs: BlockInputs) -> torch.Tensor:
    """Returns `block`'s outputs on `hidden` [windows, tokens, hidden], in batches, without gradients."""
    with torch.no_grad():
        outputs = [block(part, **batch_kwargs(inputs, len(part))) for part in hidden.split(inputs.batch)]
    return torch.cat([out[0] if isinstance(out, tuple) else out for out in outputs])


def trainable(config: ModuleConfig) -> bool:
    """Returns whether a module's config is one the polish trains: an int grid below 16 bits, no outlier kept in
    fp16, no activation smoothing (their weights are not on one plain grid) and 16-bit activations (rounded
    activations would stop the gradient of the modules before)."""
    return (
        config.weight.bits != 16 and method_of(config.weight).format == INT_GRID
        and not keeps_outliers(config.outliers) and not transforms_of(config.activation) and config.activation.bits == 16
    )  # fmt: skip


def trained_modules(model: nn.Module, layer: int, resolved: ResolvedStrategy, engine: EngineLevels = NO_ENGINE) -> list[str]:
    """Returns the modules of block `layer` a polish trains: on an int grid (`trainable`) or in a GGML type's blocks."""
    return [name for name in block_modules(model, layer) if trainable(resolved.modules[name]) or name in engine.blocks]


def quantized_block(
    model: nn.Module, layer: int, resolved: ResolvedStrategy, stats: Mapping[str, LayerStats] | None,
    weights: Mapping[str, torch.Tensor] | None = None, leave: frozenset[str] = frozenset(), engine: EngineLevels = NO_ENGINE,
) -> nn.Module:  # fmt: skip
    """Returns a frozen copy of block `layer` computing as the strategy says (modules in `weights` with those
    weights, e.g. polished ones, then those `engine` holds; modules in `leave` as they are, for the caller to
    replace)."""
    block = copy.deepcopy(decoder_layers(model)[layer]).requires_grad_(False)
    dtype = COMPUTE_DTYPES[resolved.compute_dtype]
    weights = {**engine.weights, **(weights or {})}
    for name, inner in block_modules(model, layer).items():
        config, linear = resolved.modules[name], block.get_submodule(inner)
        if name in weights:
            module = QuantizedLinear(weights[name], linear.bias, config.activation, None, dtype, 0)
        elif name in leave or (config.weight.bits == 16 and config.activation.bits == 16 and dtype == torch.float32):
            continue
        else:
            module = quantize_module(linear, config, stats.get(name) if stats else None, dtype)
        block.set_submodule(inner, module)
    return block


def training_block(
    model: nn.Module, layer: int, resolved: ResolvedStrategy, stats: Mapping[str, LayerStats] | None,
    configs: Mapping[str, ModuleConfig], learn_scale: bool, engine: EngineLevels = NO_ENGINE,
) -> tuple[nn.Module, list[QatLinear | GgmlQatLinear]]:  # fmt: skip
    """Returns a copy of block `layer` whose trained modules (`trained_modules`) are `QatLinear`s starting from the
    strategy's quantization under `configs` (module name -> config, e.g. a curriculum's first width), or
    `GgmlQatLinear`s starting from llama.cpp's blocks; the rest frozen as the strategy quantizes them; and those
    trained modules, the only parameters that take gradients."""
    names = frozenset(trained_modules(model, layer, resolved, engine))
    block = quantized_block(model, layer, resolved, stats, leave=names, engine=engine)
    base = decoder_layers(model)[layer]
    qat = []
    for name, inner in block_modules(model, layer).items():
        if name not in names:
            continue
        config, linear = configs[name], base.get_submodule(inner)
        if name in engine.blocks:
            module = GgmlQatLinear(name, engine.blocks[name], linear.bias, learn_scale)
        else:
            quantized = quantize_module(linear, config, stats.get(name) if stats else None, torch.float32).weight
            module = QatLinear.from_weights(name, linear.weight, quantized, linear.bias, config.weight, learn_scale)
        block.set_submodule(inner, module)
        qat.append(module)
    return block, qat
