"""A model run layer by layer, as GPTQ runs one: for models bigger than the device.

The embeddings, the final norm and the head live on the device, the decoder blocks on the host. A pass captures
every window's input to the first block and the keyword arguments the model gives each block (rotary embeddings,
attention masks: a model such as Gemma 3 gives its sliding and full layers different ones), then moves each block
to the device in turn, runs it on all windows' hidden states (`run_block`, in batches; polish runs its blocks with it too) and
moves it back; last, the model's own norm and head (and any final soft-capping) run on the final hidden states,
batch by batch. The logits are those of the whole model's forward: the same operations on the same batches.

The capture and the head run the model's own forward with each block's `forward` replaced for the duration: a
recorder that keeps the block's keyword arguments, or a stand-in that returns the final hidden states.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

_LAYERS = re.compile(r"^(.*\.layers)\.(\d+)\.(.+)$")
HOST = torch.device("cpu")  # where a layer-by-layer model's decoder blocks live between their turns on the device
_DROPPED = ("hidden_states", "past_key_values", "use_cache")  # keyword arguments a block is not given again


class _Captured(Exception):
    pass


@dataclass(frozen=True)
class BlockInputs:
    """The first decoder block's inputs: hidden states [windows, tokens, hidden] and the keyword arguments the
    model passes every block for one batch of `batch` windows (rotary embeddings, attention mask)."""

    hidden: torch.Tensor
    kwargs: dict
    batch: int


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


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """Returns the model's decoder blocks (the module list holding the quantizable linears, also while a strategy's
    modules stand in for them)."""
    return next(module for name, module in model.named_modules() if isinstance(module, nn.ModuleList) and _LAYERS.match(name + ".0.x"))


def model_device(model: nn.Module) -> torch.device:
    """Returns the device the model reads its tokens on: its input embeddings' (the device, also when sequential)."""
    return model.get_input_embeddings().weight.device


@contextmanager
def _forwards(layers: nn.ModuleList, make: Callable[[int], Callable]) -> Iterator[None]:
    """Yields while block i's `forward` is `make(i)` (an instance attribute over the class's method)."""
    try:
        for index, layer in enumerate(layers):
            layer.forward = make(index)
        yield
    finally:
        for layer in layers:
            layer.__dict__.pop("forward", None)


def capture_blocks(model: nn.Module, windows: torch.Tensor, batch: int) -> tuple[torch.Tensor, list]:
    """Returns the first block's input on every window [windows, tokens, hidden] (in the model's dtype, on its device)
    and, per block, the `BlockInputs` it is run with (the keyword arguments the model gives it, of the first batch)."""
    layers, device = decoder_layers(model), model_device(model)
    hidden, kwargs = [], [None] * len(layers)

    def recorder(index: int):
        def forward(hidden_states, *args, **keywords):
            if args:
                raise RuntimeError(f"decoder block {index} was given positional arguments beyond the hidden states")
            if index == 0:
                hidden.append(hidden_states)
            if kwargs[index] is None:  # the first batch's, the largest: smaller batches cut them (batch_kwargs)
                kwargs[index] = {k: v for k, v in keywords.items() if k not in _DROPPED}
            if index == len(layers) - 1:
                raise _Captured
            return hidden_states

        return forward

    first = min(batch, len(windows))
    with _forwards(layers, recorder):
        for part in windows.split(batch):
            try:
                model(input_ids=part.to(device), use_cache=False)
            except _Captured:
                pass
    hidden = torch.cat(hidden)
    return hidden, [BlockInputs(hidden, keywords, first) for keywords in kwargs]


@torch.inference_mode()
def run_layers(
    model: nn.Module, windows: torch.Tensor, batch: int, after_layer: Callable[[int], None] | None = None
) -> torch.Tensor:
    """Returns the last block's output on every window [windows, tokens, hidden], each block moved from the host to
    the device, run on all windows in batches of `batch`, and moved back (`after_layer(i)` after block i)."""
    hidden, inputs = capture_blocks(model, windows, batch)
    device = model_device(model)
    for index, layer in enumerate(decoder_layers(model)):
        home = next(layer.parameters()).device
        layer.to(device)
        try:
            hidden = run_block(layer, hidden, inputs[index])
        finally:
            layer.to(home)
        if after_layer is not None:
            after_layer(index)
    return hidden


def _head_logits(model: nn.Module, batch: torch.Tensor, final: torch.Tensor) -> torch.Tensor:
    """Returns the model's logits on `batch` given its last block's output `final` (norm, head, soft-capping)."""
    layers = decoder_layers(model)
    with _forwards(layers, lambda _index: lambda *args, **keywords: final):
        return model(input_ids=batch, use_cache=False).logits


def logit_batches(
    model: nn.Module, windows: torch.Tensor, batch: int, sequential: bool = False
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yields (token batch, logits) for the windows in batches of `batch`, on the model's device: the whole model's
    forward, or (sequential) layer by layer."""
    device = model_device(model)
    if not sequential:
        for part in windows.split(batch):
            part = part.to(device)
            yield part, model(input_ids=part, use_cache=False).logits
        return
    final = run_layers(model, windows, batch)
    for part, hidden in zip(windows.split(batch), final.split(batch)):
        part = part.to(device)
        yield part, _head_logits(model, part, hidden)
