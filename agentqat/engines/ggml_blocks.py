"""The blocks of GGML's 32-wide types, read and written exactly: a block is an fp16 scale d (and, for the `_1` types,
an fp16 minimum m) and 32 indices into the type's value table; each weight is d * table[index] (+ m), computed in
float32 as ggml and gguf.quants.dequantize do.

    type     bytes  header       indices                                   table
    Q4_0     18     d            4 bits: byte j holds weights j and j + 16  -8 .. 7
    Q4_1     20     d, m         4 bits, as Q4_0                            0 .. 15
    Q5_0     22     d            a uint32 of fifth bits, then 4 bits        -16 .. 15
    Q5_1     24     d, m         as Q5_0                                    0 .. 31
    Q8_0     34     d            one int8 each                              -128 .. 127
    IQ4_NL   18     d            4 bits, as Q4_0                            ggml's 16 non-linear values (-127 .. 113)

These are the types a polish can train inside (`agentqat.polish.ggml_grid`) and write back byte for byte.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

BLOCK = 32
IQ4_NL_VALUES = (-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113)  # ggml's kvalues_iq4nl


@dataclass(frozen=True)
class BlockLayout:
    """A 32-wide GGML type: its value table (index -> value), whether it keeps a minimum, its index width."""

    type_name: str
    table: tuple[int, ...]
    has_min: bool
    index_bits: int

    @property
    def block_bytes(self) -> int:
        """Returns the bytes of one block: fp16 d (and m), then 32 indices of `index_bits` bits."""
        return 2 * (1 + self.has_min) + BLOCK * self.index_bits // 8


LAYOUTS = {
    layout.type_name: layout
    for layout in (
        BlockLayout("Q4_0", tuple(range(-8, 8)), False, 4),
        BlockLayout("Q4_1", tuple(range(16)), True, 4),
        BlockLayout("Q5_0", tuple(range(-16, 16)), False, 5),
        BlockLayout("Q5_1", tuple(range(32)), True, 5),
        BlockLayout("Q8_0", tuple(range(128)) + tuple(range(-128, 0)), False, 8),  # the byte's value as int8
        BlockLayout("IQ4_NL", IQ4_NL_VALUES, False, 4),
    )
}


@dataclass(frozen=True)
class GgmlBlocks:
    """A [rows, columns] weight in a 32-wide GGML type: d and m ([rows * columns / 32], fp16 values held as float32;
    m None for types without a minimum) and indices ([blocks, 32], int64) into the type's table."""

    type_name: str
    shape: tuple[int, int]
    d: torch.Tensor
    m: torch.Tensor | None
    index: torch.Tensor

    @property
    def layout(self) -> BlockLayout:
        return LAYOUTS[self.type_name]

    def values(self) -> torch.Tensor:
        """Returns the weights as ggml computes them: float32 d * table[index] (+ m), [rows, columns]."""
        table = torch.tensor(self.layout.table, dtype=torch.float32)
        values = self.d[:, None] * table[self.index]
        if self.m is not None:
            values = values + self.m[:, None]
        return values.reshape(self.shape)


def _fp16(column: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(column).view(np.float16).astype(np.float32).reshape(-1))


def decode(raw: np.ndarray, type_name: str, columns: int) -> GgmlBlocks:
    """Returns the blocks of a tensor's raw bytes (uint8 [rows, bytes per row]) in `type_name`; ValueError for a type
    that is not one of LAYOUTS or bytes that do not fit it."""
    if type_name not in LAYOUTS:
        raise ValueError(f"{type_name} is not a 32-wide GGML type ({', '.join(LAYOUTS)})")
    layout = LAYOUTS[type_name]
    blocks = np.asarray(raw, dtype=np.uint8).reshape(-1, layout.block_bytes)
    if blocks.shape[0] * BLOCK != raw.shape[0] * columns:
        raise ValueError(f"{raw.shape} bytes are not {raw.shape[0]} rows of {columns} {type_name} weights")
    d = _fp16(blocks[:, 0:2])
    m = _fp16(blocks[:, 2:4]) if layout.has_min else None
    body = blocks[:, 2 * (1 + layout.has_min) :]
    if layout.index_bits == 8:
        index = body.astype(np.int64)
    else:
        high = np.zeros((len(blocks), BLOCK), dtype=np.int64)
        if layout.index_bits == 5:
            high = np.unpackbits(body[:, :4], axis=1, bitorder="little").astype(np.int64) << 4
            body = body[:, 4:]
        nibbles = np.concatenate([body & 0x0F, body >> 4], axis=1).astype(np.int64)
        index = nibbles | high
    return GgmlBlocks(type_name, (raw.shape[0], columns), d, m, torch.from_numpy(np.ascontiguousarray(index)))


def encode(blocks: GgmlBlocks) -> np.ndarray:
    """Returns the blocks as ggml stores them: uint8 [rows, bytes per row] (the inverse of `decode`)."""
    layout = blocks.layout
    parts = [blocks.d.to(torch.float16).numpy().view(np.uint8).reshape(-1, 2)]
    if layout.has_min:
        parts.append(blocks.m.to(torch.float16).numpy().view(np.uint8).reshape(-1, 2))
    index = blocks.index.numpy().astype(np.uint8)
    if layout.index_bits == 8:
        parts.append(index)
    else:
        if layout.index_bits == 5:
            parts.append(np.packbits((index >> 4) & 1, axis=1, bitorder="little"))
        parts.append((index[:, :16] & 0x0F) | ((index[:, 16:] & 0x0F) << 4))
    rows = blocks.shape[0]
    return np.concatenate(parts, axis=1).astype(np.uint8).reshape(rows, -1)
