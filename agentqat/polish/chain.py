"""Hidden states at decoder block boundaries (state i: the input of block i), computed on demand from the nearest
kept state below, so that blocks trained out of order (sensitivity order) do not rerun the whole model each time."""

from __future__ import annotations

from collections.abc import Callable, Collection

import torch
from torch import nn

from agentqat.layerwise import BlockInputs, run_block


class Chain:
    """The states of one chain of blocks (`block(i)` returns block i as the chain computes it now)."""

    def __init__(self, inputs: BlockInputs, block: Callable[[int], nn.Module]):
        self.inputs = inputs
        self.block = block
        self.states: dict[int, torch.Tensor] = {0: inputs.hidden}

    def start(self, layer: int) -> int:
        """Returns the boundary the state of `layer` would be computed from."""
        return max(k for k in self.states if k <= layer)

    def state(self, layer: int) -> torch.Tensor:
        """Returns the input of block `layer` (kept)."""
        hidden = self.states[self.start(layer)]
        for earlier in range(self.start(layer), layer):
            hidden = run_block(self.block(earlier), hidden, self.inputs)
        self.states[layer] = hidden
        return hidden

    def changed(self, layer: int) -> None:
        """Drops the states after block `layer`: it computes differently now."""
        self.states = {k: v for k, v in self.states.items() if k <= layer}

    def keep(self, boundaries: Collection[int]) -> None:
        """Drops every state but the first and those at `boundaries`."""
        self.states = {k: v for k, v in self.states.items() if k == 0 or k in boundaries}

    def blocks_needed(self, layers: Collection[int]) -> set[int]:
        """Returns the blocks that computing the states of `layers` from the kept ones runs."""
        return {block for layer in layers for block in range(self.start(layer), layer)}
