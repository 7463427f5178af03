"""Which GGML type holds a linear module's weight exactly, and that weight's blocks in it.

    module config                                                      GGML type and how its blocks are made
    format gguf_q4_0 / _q4_1 / _q5_0 / _q5_1 / _q8_0                    its own type, requantized from the base weight by
                                                                       gguf.quants (the arena ran the same call)
    a GGUF format with rounding imatrix (gguf_iq4_nl too)              its own type as llama-quantize made it: an
                                                                       [engine] arena's export (agentqat.export.gguf_engine)
    a GGUF format with rounding gptq (gguf_iq4_nl too)                 its own type, the blocks GPTQ found (the level
                                                                       database holds them; agentqat.quant.ggml_gptq)
    format int, symmetric, group 32, 4 / 5 / 8 bits, rounding rtn,      Q4_0 / Q5_0 / Q8_0: the arena's values packed as
    gptq or hqq, any clip, fp16 or pow2 scales                         they are (codes -7..7 / -15..15 / -127..127 and
                                                                       an fp16 scale per block: d * q bit for bit)
    bits 16                                                            kept (the exporter stores the base weight)
    anything else                                                      does not map; `gguf_problem` says why

Asymmetric int grids do not map: their value scale * (code - zero) needs scale * zero as Q4_1's fp16 minimum, which
fp16 holds only in some blocks. Power-of-two scales map (a power of two is an fp16), but the file stores them as
fp16: 0.25 bits per weight more than the strategy counts.
"""

from __future__ import annotations

import numpy as np
import torch

from agentqat.quant.base import INT_GRID
from agentqat.quant.ggml import GGML_BLOCK, GGML_TYPE_OF_FORMAT
from agentqat.quant.ggml_engine import ENGINE_TYPE_OF_FORMAT, is_engine_made
from agentqat.quant.registry import method_of
from agentqat.quant.schemes import outlier_scheme, transforms_of
from agentqat.strategy.resolve import ModuleConfig

GGUF = "gguf"  # the export format (`export.gguf.FORMAT`), as outlier schemes name it
INT_GRID_TYPES = {4: "Q4_0", 5: "Q5_0", 8: "Q8_0"}  # symmetric int grid at these widths -> GGML type
CODE_RANGES = {"Q4_0": (-8, 7), "Q5_0": (-16, 15), "Q8_0": (-128, 127)}  # codes a `_0` block stores
GRID_ROUNDINGS = ("rtn", "gptq", "hqq")  # roundings whose values lie on their groups' grid (symmetric hqq is rtn)
PACKED = "packed"  # how a type's blocks are made: from the arena's values
REQUANTIZED = "requantized"  # ... or from the base weight by gguf.quants
ENGINE_MADE = "engine"  # ... or by llama-quantize with the arena's imatrix (an [engine] arena exports those)
OWN_BLOCKS = "blocks"  # ... or by the method itself, inside the type (the export source carries them)


def in_own_blocks(config: ModuleConfig) -> bool:
    """Returns whether the config's method works inside a GGML type's blocks (rounding gptq on a GGUF format)."""
    return config.weight.bits != 16 and method_of(config.weight).blocks is not None


def gguf_problem(config: ModuleConfig) -> str | None:
    """Returns why no GGML type holds a module quantized by `config`, or None when one does (or bits is 16)."""
    weight, activation = config.weight, config.activation
    if activation.bits != 16:
        return f"{activation.bits}-bit activations: a GGUF file holds weights only (llama.cpp quantizes inputs itself)"
    for transform in transforms_of(activation):
        if not transform.carried_by(GGUF):
            return f"{transform.label} divides the inputs by per-channel scales that no GGUF tensor holds"
    if not (outliers := outlier_scheme(config.outliers)).carried_by(GGUF):
        return f"{outliers.name} outliers: GGUF blocks keep no {outliers.kept} beside their codes"
    if weight.bits == 16 or weight.format in GGML_TYPE_OF_FORMAT or is_engine_made(weight) or in_own_blocks(config):
        return None
    if weight.format != INT_GRID:
        return f"format {weight.format} has no GGUF type; use gguf_q4_0, gguf_q4_1 or gguf_q8_0"
    reasons = []
    if weight.group_size != GGML_BLOCK:
        reasons.append(f"group size {weight.group_size or 'per channel'}: GGUF blocks are {GGML_BLOCK} wide")
    if not weight.symmetric:
        reasons.append("asymmetric: Q4_1/Q5_1 keep an fp16 minimum, not an integer zero point")
    if weight.bits not in INT_GRID_TYPES:
        reasons.append(f"{weight.bits}-bit codes: GGUF's simple types store 4, 5 or 8 bits")
    if weight.rounding not in GRID_ROUNDINGS:
        reasons.append(f"rounding {weight.rounding} scales each input column after rounding")
    if not reasons:
        return None
    return "; ".join(reasons) + "; use int 4/5/8-bit g32 symmetric, or format gguf_q4_0 / gguf_q4_1 / gguf_q8_0"


def ggml_type(config: ModuleConfig) -> tuple[str, str] | None:
    """Returns (GGML type name, how its blocks are made) for a config `gguf_problem` accepts; None for bits 16."""
    weight = config.weight
    if weight.bits == 16:
        return None
    if in_own_blocks(config):
        return ENGINE_TYPE_OF_FORMAT[weight.format].type_name, OWN_BLOCKS
    if is_engine_made(weight):
        return ENGINE_TYPE_OF_FORMAT[weight.format].type_name, ENGINE_MADE
    if weight.format in GGML_TYPE_OF_FORMAT:
        return GGML_TYPE_OF_FORMAT[weight.format].type_name, REQUANTIZED
    return INT_GRID_TYPES[weight.bits], PACKED


def block_codes(values: torch.Tensor, low: int, high: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns (d [blocks], codes [blocks, 32]): per block of 32 values an fp16-exact scale and integer codes in
    [low, high] with d * codes == values bit for bit (fp32); raises ValueError when some blocks have none."""
    blocks = values.to(torch.float32).reshape(-1, GGML_BLOCK)
    peak = blocks.abs().amax(1)
    scales, codes = torch.zeros_like(peak), torch.zeros_like(blocks)
    found = peak == 0
    for top in range(max(-low, high), 0, -1):  # the largest code magnitude a block uses: its scale is peak / top
        todo = (~found).nonzero().squeeze(1)
        if not len(todo):
            break
        scale = peak[todo] / top
        q = torch.round(blocks[todo] / scale[:, None])
        exact = (q * scale[:, None] == blocks[todo]).all(1) & (q >= low).all(1) & (q <= high).all(1)
        exact &= scale.to(torch.float16).to(torch.float32) == scale
        hit = todo[exact]
        scales[hit], codes[hit], found[hit] = scale[exact], q[exact], True
    if not found.all():
        missing = int((~found).sum())
        raise ValueError(f"{missing} of {len(found)} blocks are not an fp16 scale times codes in [{low}, {high}]")
    return scales, codes


def packed_blocks(values: torch.Tensor, type_name: str) -> np.ndarray:
    """Returns `values` [out, in] as `type_name` blocks (Q4_0, Q5_0 or Q8_0; uint8 [out, bytes per row]), in
    ggml's layout: fp16 d, then (Q5_0) the fifth bits of the 32 codes as a little-endian uint32, then the codes
    (Q8_0: int8; Q4_0 / Q5_0: low nibbles, element j and j + 16 sharing byte j)."""
    low, high = CODE_RANGES[type_name]
    scales, codes = block_codes(values, low, high)
    d = scales.to(torch.float16).numpy().view(np.uint8).reshape(-1, 2)
    if type_name == "Q8_0":
        parts = [d, codes.to(torch.int8).numpy().view(np.uint8)]
    else:
        unsigned = (codes - low).to(torch.uint8).numpy()
        nibbles = (unsigned[:, :16] & 0x0F) | ((unsigned[:, 16:] & 0x0F) << 4)
        parts = [d, nibbles]
        if type_name == "Q5_0":
            high_bits = np.packbits(unsigned >> 4, axis=-1, bitorder="little")
            parts = [d, high_bits, nibbles]
    rows = values.shape[0]
    return np.concatenate(parts, axis=1).astype(np.uint8).reshape(rows, -1)
