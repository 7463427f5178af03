"""A module's integer-grid weight as the level database stores it: codes bit-packed at their width, scales and zero
points as small as they are exact, and the dequantization that reads them back bit for bit.

The tensors of module NAME in a level file (all 1-D but the divisor):

    NAME.codes           the codes minus qmin (0 .. 2^bits - 1), row-major over [out, in], packed at `bits` bits
    NAME.scale           one scale per group (the groups of `agentqat.quant.grid.to_groups`), float16 where every
                         scale is a float16 (the grid rounds fp16 scales up to one), float32 otherwise
    NAME.scale_exponent  instead of NAME.scale for power-of-two scales: int8 exponents e, scale = 2^e
    NAME.zero_codes      integer zero points (rtn, gptq, awq) minus qmin, packed at `bits` bits like the codes
    NAME.zero            float zero points (hqq) as float16 (hqq rounds them to float16), float32 otherwise
                         (neither zero tensor: every zero point is 0, as on symmetric grids)
    NAME.divisor         float32 [in]: AWQ's per-input-channel scales, divided out after dequantization

Packing: `bits` is split into fields of 8, 4, 2 and 1 bits (its binary digits: 3 = 2 + 1, 5 = 4 + 1, 6 = 4 + 2,
7 = 4 + 2 + 1), lowest field first; each field of every code goes into its own run of S = ceil(n / (8 / width))
bytes, byte k holding the field of codes k, k + S, k + 2S, ... from its lowest bits up (the last slice padded
with zeros). A code costs exactly `bits` bits (plus at most a byte per field and module), and unpacking is a shift
and a mask of the whole run per slice, on contiguous uint8 tensors.

`pack` checks what it packed: it unpacks it and compares the result bit for bit with the quantizer's weight, and
returns None (the caller stores float32) when they differ, so a packed module always reads exactly what quantizing
on the fly computes.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from agentqat.quant.base import IntCodes
from agentqat.quant.grid import dequantize

SUFFIXES = ("codes", "scale", "scale_exponent", "zero_codes", "zero", "divisor")  # a packed module's tensors
FLOAT32_EXPONENT_BIAS = 127
FLOAT32_MANTISSA_BITS = 23


def fields(bits: int) -> tuple[int, ...]:
    """Returns the field widths a `bits`-bit code is stored in, lowest bits first (3 -> (1, 2), 6 -> (2, 4))."""
    if not 1 <= bits <= 8:
        raise ValueError(f"codes take 1 to 8 bits, got {bits}")
    return tuple(width for width in (1, 2, 4, 8) if bits & width)


def packed_size(count: int, bits: int) -> int:
    """Returns the bytes `pack_codes` makes of `count` codes of `bits` bits."""
    return sum(-(-count // (8 // width)) for width in fields(bits))


def pack_codes(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Returns the uint8 codes (each below 2^bits) packed at `bits` bits, as 1-D uint8."""
    codes = codes.reshape(-1).to(torch.uint8)
    parts, shift = [], 0
    for width in fields(bits):
        field = (codes >> shift) & ((1 << width) - 1) if width < 8 else codes
        per = 8 // width
        size = -(-field.numel() // per)
        if size * per > field.numel():
            field = torch.cat([field, field.new_zeros(size * per - field.numel())])
        slices = field.reshape(per, size)  # byte k holds codes k, k + size, k + 2 size, ... lowest bits first
        packed = slices[0].clone()
        for index in range(1, per):
            packed |= slices[index] << (index * width)
        parts.append(packed)
        shift += width
    return torch.cat(parts)


def unpack_codes(packed: torch.Tensor, bits: int, count: int) -> torch.Tensor:
    """Returns the `count` uint8 codes `pack_codes` packed at `bits` bits."""
    codes, offset, shift = None, 0, 0
    for width in fields(bits):
        per = 8 // width
        size = -(-count // per)
        run = packed[offset : offset + size]
        offset += size
        if width == 8:
            field = run
        else:
            field = torch.empty(per * size, dtype=torch.uint8, device=run.device)
            for index in range(per):  # contiguous slices: vectorised shifts and masks
                torch.bitwise_and(run >> (index * width), (1 << width) - 1, out=field[index * size : (index + 1) * size])
            field = field[:count]
        if shift:
            field = field << shift
        codes = field if codes is None else codes.bitwise_or_(field)
        shift += width
    if offset != packed.numel():
        raise ValueError(f"{packed.numel()} packed bytes do not hold {count} codes of {bits} bits")
    return codes


def _is_power_of_two(values: torch.Tensor) -> bool:
    mantissa, exponent = torch.frexp(values)
    return bool(((mantissa == 0.5) & (exponent - 1 >= -126) & (exponent - 1 <= 127)).all())


def _powers_of_two(exponents: torch.Tensor) -> torch.Tensor:
    """Returns 2^e as float32, built from its bits (exact for -126 <= e <= 127)."""
    biased = exponents.to(torch.int32) + FLOAT32_EXPONENT_BIAS
    return (biased << FLOAT32_MANTISSA_BITS).view(torch.float32)


def _smallest_float(values: torch.Tensor) -> torch.Tensor:
    """Returns `values` as float16 when that keeps every value, else as float32."""
    half = values.to(torch.float16)
    return half if torch.equal(half.to(torch.float32).view(torch.int32), values.view(torch.int32)) else values


def _integer_codes(values: torch.Tensor, qmin: int, qmax: int) -> bool:
    return bool(((values == values.round()) & (values >= qmin) & (values <= qmax)).all())


def pack(quantized: IntCodes, bits: int) -> dict[str, torch.Tensor] | None:
    """Returns the tensors storing `quantized` (keys are suffixes: "codes", "scale", ...), or None when they would
    not read back bit for bit as `dequantize(quantized)`."""
    weight = dequantize(quantized)
    codes, qmin = quantized.codes, quantized.qmin
    if quantized.qmax - qmin >= 2**bits or not _integer_codes(codes, qmin, quantized.qmax):
        return None
    tensors = {"codes": pack_codes((codes - qmin).to(torch.uint8), bits)}
    scale = quantized.scale.reshape(-1).to(torch.float32).contiguous()
    if _is_power_of_two(scale):
        tensors["scale_exponent"] = (torch.frexp(scale)[1] - 1).to(torch.int8)
    else:
        tensors["scale"] = _smallest_float(scale)
    zero = quantized.zero.reshape(-1).to(torch.float32).contiguous()
    if bool((zero != 0).any()):
        if _integer_codes(zero, qmin, quantized.qmax):
            tensors["zero_codes"] = pack_codes((zero - qmin).to(torch.uint8), bits)
        else:
            tensors["zero"] = _smallest_float(zero)
    if quantized.divisor is not None:
        tensors["divisor"] = quantized.divisor.to(torch.float32).contiguous()
    read = unpack(tensors.__getitem__, set(tensors), tuple(codes.shape), bits, qmin)
    return tensors if torch.equal(read.view(torch.int32), weight.view(torch.int32)) else None


def unpack(get: Callable[[str], torch.Tensor], keys: set[str], shape: tuple[int, int], bits: int, qmin: int) -> torch.Tensor:
    """Returns the float32 weight [out, in] of the tensors `get(suffix)` returns (`keys`: the suffixes stored).

    Computes (scale * (code - zero)) / divisor as `agentqat.quant.grid.dequantize` does, in two passes over float32:
    the uint8 codes minus the zero (or minus -qmin: code = stored code + qmin) make the float32 differences exactly
    (whole numbers, or one rounding for a float zero, as in float32 code - zero), then the scale multiplies in place
    (a product is the same either way round).
    """
    out_features, in_features = shape
    if "scale_exponent" in keys:
        scale = _powers_of_two(get("scale_exponent"))
    else:
        scale = get("scale").to(torch.float32)
    scale = scale.reshape(-1, 1)
    stored = unpack_codes(get("codes"), bits, out_features * in_features).reshape(scale.shape[0], -1)
    if "zero_codes" in keys:
        zero = unpack_codes(get("zero_codes"), bits, scale.shape[0]).to(torch.float32).reshape(-1, 1)
        weight = stored - (zero + qmin if qmin else zero)
    elif "zero" in keys:
        weight = stored - get("zero").to(torch.float32).reshape(-1, 1)
    else:  # every zero point is 0; codes are never -0.0, so code - 0 is the code
        weight = stored - float(-qmin)
    weight = weight.mul_(scale).reshape(out_features, in_features)
    return weight.div_(get("divisor")) if "divisor" in keys else weight
