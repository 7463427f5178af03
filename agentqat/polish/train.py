"""Block-wise quantization-aware training of a strategy (EfficientQAT's Block-AP), block by block.

For each decoder block, in natural or sensitivity order: the base block's outputs on full-precision inputs are the
targets; a copy of the block, its trainable modules as `QatLinear`s (the rest as the strategy quantizes them),
learns with AdamW and a cosine schedule to reproduce them (MSE) from the inputs the quantized blocks before it
give. Only that copy takes gradients, and it is dropped once its weights are frozen on their grid. Blocks before
the current one compute as polished if polished already, else as the strategy quantizes them (sensitivity order
visits blocks out of order: `Chain` keeps the inputs of the blocks still to train and recomputes the stale ones
from the nearest kept state).

On an [engine] arena the modules at llama.cpp's levels start from their level files' blocks and train inside their
GGML type (`agentqat.polish.ggml_grid`), and the quantized chain starts from the embedding at the engine's type,
so the blocks learn to correct its error too.

With the curriculum, a block whose modules ask for fewer than 4 bits trains at 4 bits, then 3, then 2 (each
module down to its own width), moving on when an epoch improves the loss by less than POLISH_CONVERGED.

Departures from EfficientQAT: far fewer windows and epochs (2 CPU cores); training starts from the strategy's
own quantization (GPTQ's, not a fresh RTN one), so a polished block starts where the unpolished one is; a block
whose reconstruction loss ends no lower is left unpolished; norms and biases stay fixed; scales are learned as
logarithms.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from agentqat import defaults
from agentqat.layerwise import BlockInputs, batch_kwargs, decoder_layers, run_block
from agentqat.polish.blocks import capture_inputs, quantized_block, trained_modules, training_block
from agentqat.polish.chain import Chain
from agentqat.polish.curriculum import bits_at, converged, stages
from agentqat.polish.ggml_grid import NO_ENGINE, EngineLevels
from agentqat.polish.ste import PolishedWeight, QatLinear
from agentqat.progress import Reporter, phase
from agentqat.quant.base import LayerStats
from agentqat.strategy.apply import embedding_applied
from agentqat.strategy.resolve import ModuleConfig, ResolvedStrategy

Order = Literal["natural", "sensitivity"]


@dataclass(frozen=True)
class PolishSettings:
    """How blocks are trained: windows, epochs, batch, learning rates (weights; log2 scales; pow2 exponents; zero
    points), order, curriculum, and whether scales (pow2 exponents included) are learned."""

    windows: int = defaults.POLISH_WINDOWS
    epochs: int = defaults.POLISH_EPOCHS
    batch: int = defaults.POLISH_BATCH
    weight_lr: float = defaults.POLISH_WEIGHT_LR
    scale_lr: float = defaults.POLISH_SCALE_LR
    exponent_lr: float = defaults.POLISH_EXPONENT_LR
    zero_lr: float = defaults.POLISH_ZERO_LR
    order: Order = "natural"
    curriculum: bool = False
    learn_scales: bool = True
    seed: int = defaults.SEED

    def __post_init__(self) -> None:
        if min(self.windows, self.epochs, self.batch) < 1:
            raise ValueError("windows, epochs and batch must be at least 1")
        if self.order not in ("natural", "sensitivity"):
            raise ValueError(f"order must be natural or sensitivity, got {self.order!r}")


@dataclass(frozen=True)
class BlockReport:
    """One block's training: widths visited, reconstruction MSE before and after, epochs, seconds, and whether the
    polished block was kept (a block the training left worse stays as the strategy quantizes it)."""

    layer: int
    bits: tuple[int, ...]
    loss_before: float
    loss_after: float
    epochs: int
    seconds: float
    kept: bool = True


@dataclass(frozen=True)
class Polished:
    """The polished weights (module name -> weight on its grid) and each block's report, in training order."""

    weights: dict[str, PolishedWeight]
    blocks: tuple[BlockReport, ...]
    seconds: float


def block_order(num_layers: int, order: Order, sensitivities: Mapping[int, float] | None) -> list[int]:
    """Returns the layers in training order: natural, or most sensitive first (ties in natural order)."""
    if order == "natural":
        return list(range(num_layers))
    if not sensitivities:
        raise ValueError("sensitivity order needs per-layer sensitivities")
    return sorted(range(num_layers), key=lambda layer: (-sensitivities.get(layer, 0.0), layer))


def _loss(block: nn.Module, hidden: torch.Tensor, target: torch.Tensor, inputs: BlockInputs) -> float:
    return torch.nn.functional.mse_loss(run_block(block, hidden, inputs), target).item()


def _optimizer(qat: Sequence[QatLinear], settings: PolishSettings) -> torch.optim.Optimizer:
    groups = [
        {"params": [m.weight for m in qat], "lr": settings.weight_lr},
        {"params": [m.scale for m in qat if m.scale.requires_grad and not m.pow2], "lr": settings.scale_lr},
        {"params": [m.scale for m in qat if m.scale.requires_grad and m.pow2], "lr": settings.exponent_lr},
        {"params": [m.zero for m in qat if m.zero.requires_grad], "lr": settings.zero_lr},
    ]
    return torch.optim.AdamW([g for g in groups if g["params"]], weight_decay=0.0)


def _train(
    block: nn.Module, qat: Sequence[QatLinear], hidden: torch.Tensor, target: torch.Tensor, inputs: BlockInputs,
    settings: PolishSettings, last: bool, rng: torch.Generator, step,
) -> int:  # fmt: skip
    """Trains `block` for up to `settings.epochs` epochs (fewer when not `last` and the loss converged); returns
    the epochs trained."""
    batches = -(-len(hidden) // settings.batch)
    optimizer = _optimizer(qat, settings)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=settings.epochs * batches)
    losses: list[float] = []
    for epoch in range(settings.epochs):
        total = 0.0
        for index in torch.randperm(len(hidden), generator=rng).split(settings.batch):
            out = block(hidden[index], **batch_kwargs(inputs, len(index)))
            loss = torch.nn.functional.mse_loss(out[0] if isinstance(out, tuple) else out, target[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            total += loss.item() * len(index)
            step(1)
        losses.append(total / len(hidden))
        if not last and converged(losses, defaults.POLISH_CONVERGED):
            return epoch + 1
    return settings.epochs


def polish_block(
    model: nn.Module, layer: int, resolved: ResolvedStrategy, stats: Mapping[str, LayerStats] | None, unpolished: nn.Module,
    hidden: torch.Tensor, target: torch.Tensor, inputs: BlockInputs, settings: PolishSettings, reporter: Reporter | None = None,
    engine: EngineLevels = NO_ENGINE,
) -> tuple[dict[str, PolishedWeight], nn.Module, BlockReport]:  # fmt: skip
    """Returns block `layer`'s polished weights, the polished block (frozen) and its report, trained from the
    quantized inputs `hidden` to the base block's outputs `target` (see the module docstring); `unpolished` is the
    block as the strategy quantizes it. Modules in a GGML type's blocks train inside them at their own type."""
    started = time.perf_counter()
    loss_before = _loss(unpolished, hidden, target, inputs)
    names = [name for name in trained_modules(model, layer, resolved, engine) if name not in engine.blocks]
    widths = stages([resolved.modules[name].weight.bits for name in names], settings.curriculum)
    configs = {name: _at(config, bits_at(config.weight.bits, widths[0])) for name, config in resolved.modules.items()}
    block, qat = training_block(model, layer, resolved, stats, configs, settings.learn_scales, engine)
    block.train()
    rng = torch.Generator().manual_seed(settings.seed * 1000 + layer)
    total = len(widths) * settings.epochs * -(-len(hidden) // settings.batch)
    epochs = 0
    detail = f"{len(hidden)} windows, {len(qat)} modules, widths {'>'.join(map(str, widths))}"
    with phase(reporter, f"polishing block {layer}", total=total, detail=detail) as step:
        for position, width in enumerate(widths):
            for module in (module for module in qat if isinstance(module, QatLinear)):
                module.retarget(bits_at(resolved.modules[module.name].weight.bits, width))
            epochs += _train(block, qat, hidden, target, inputs, settings, position == len(widths) - 1, rng, step)
    weights = {module.name: module.frozen() for module in qat}
    del block, qat
    polished = quantized_block(model, layer, resolved, stats, {name: w.weight for name, w in weights.items()}, engine=engine)
    loss_after = _loss(polished, hidden, target, inputs)
    kept = loss_after < loss_before
    report = BlockReport(layer, tuple(widths), loss_before, loss_after, epochs, time.perf_counter() - started, kept)
    return (weights, polished, report) if kept else ({}, unpolished, report)


def _at(config: ModuleConfig, bits: int) -> ModuleConfig:
    return dataclasses.replace(config, weight=dataclasses.replace(config.weight, bits=bits))


def polish_model(
    model: nn.Module, resolved: ResolvedStrategy, stats: Mapping[str, LayerStats] | None, windows: torch.Tensor,
    settings: PolishSettings, sensitivities: Mapping[int, float] | None = None, reporter: Reporter | None = None,
    engine: EngineLevels = NO_ENGINE,
) -> Polished:  # fmt: skip
    """Returns the strategy's trainable modules polished block by block on the calibration `windows` (see the
    module docstring); `engine`: the modules at levels llama.cpp made, as their files hold them, and the embedding
    the quantized chain starts from (the targets start from the base's); `model` is not changed."""
    started = time.perf_counter()
    inputs = capture_inputs(model, windows, settings.batch)
    with embedding_applied(model, engine.embedding):
        quantized_inputs = capture_inputs(model, windows, settings.batch) if engine.embedding else inputs
    layers = decoder_layers(model)
    blocks: dict[int, nn.Module] = {}  # each block as the quantized chain computes it, while a later block needs it

    def current(layer: int) -> nn.Module:
        if layer not in blocks:
            blocks[layer] = quantized_block(model, layer, resolved, stats, engine=engine)
        return blocks[layer]

    full, quantized = Chain(inputs, lambda layer: layers[layer]), Chain(quantized_inputs, current)
    weights: dict[str, PolishedWeight] = {}
    reports = []
    order = block_order(len(layers), settings.order, sensitivities)
    for position, layer in enumerate(order):
        target = run_block(layers[layer], full.state(layer), inputs)
        polished, block, report = polish_block(model, layer, resolved, stats, current(layer), quantized.state(layer), target, inputs, settings, reporter, engine)
        weights.update(polished)
        reports.append(report)
        blocks[layer] = block
        quantized.changed(layer)
        remaining = set(order[position + 1 :])
        if layer + 1 in remaining:  # natural order: the next block's inputs, while this block's are at hand
            full.states[layer + 1] = target
            quantized.state(layer + 1)
        full.keep(remaining)
        quantized.keep(remaining)
        needed = quantized.blocks_needed(remaining)
        blocks = {k: v for k, v in blocks.items() if k in needed}
    return Polished(weights, tuple(reports), time.perf_counter() - started)
