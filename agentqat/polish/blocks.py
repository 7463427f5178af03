"""Decoder blocks taken one at a time: the first block's inputs captured from the model, a block run on hidden
states, and a block's copy with the strategy's quantized modules (frozen) or trainable `QatLinear`s in them.

Nothing here changes the model: every block that is quantized or trained is a deep copy of one block.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping

import torch
from torch import nn

from agentqat.layerwise import BlockInputs, capture_blocks, decoder_layers
from agentqat.models import quantizable_linears
from agentqat.polish.ggml_grid import NO_ENGINE, EngineLevels, GgmlQatLinear
from agentqat.polish.ste import QatLinear
from agentqat.quant.base import INT_GRID, LayerStats
from agentqat.quant.registry import method_of
from agentqat.quant.schemes import keeps_outliers, transforms_of
from agentqat.strategy.apply import COMPUTE_DTYPES, QuantizedLinear, quantize_module
from agentqat.strategy.resolve import ModuleConfig, ResolvedStrategy

_LAYERS = re.compile(r"^(.*\.layers)\.(\d+)\.(.+)$")


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
    """Returns the first block's inputs on `windows` (float32), run through the model's embeddings in batches of `batch`."""
    hidden, inputs = capture_blocks(model, windows, batch)
    return BlockInputs(hidden.to(torch.float32), inputs[0].kwargs, inputs[0].batch)


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
