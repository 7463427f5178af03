"""The plan's inputs from the command line: a device (cpu, cuda, cuda:N) and a memory size (16GiB, 40GB, 80G)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from agentqat.errors import UserError

UNITS = {"": None, "b": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40, "kib": 2**10, "mib": 2**20, "gib": 2**30,
         "tib": 2**40, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12}  # fmt: skip


@dataclass(frozen=True)
class Device:
    """Where a worker computes: "cpu", or "cuda" with an optional index."""

    kind: str
    index: int | None = None

    def __str__(self) -> str:
        return self.kind if self.index is None else f"{self.kind}:{self.index}"

    @property
    def is_cuda(self) -> bool:
        return self.kind == "cuda"


def parse_device(text: str, option: str = "--device") -> Device:
    """Returns the device named by `text` (cpu, cuda or cuda:N); raises UserError naming `option` otherwise."""
    match = re.fullmatch(r"(cpu|cuda)(?::(\d{1,3}))?", text.strip().lower())
    if match is None or (match.group(1) == "cpu" and match.group(2) is not None):
        raise UserError(f"{option} {text[:60]!r} is not a device", f"write {option} cpu, cuda or cuda:N (N the GPU's index)")
    return Device(match.group(1), None if match.group(2) is None else int(match.group(2)))


def parse_memory(text: str, option: str = "--gpu-memory") -> int:
    """Returns the bytes of a memory size such as 16GiB, 40GB, 80G or 24576MiB (K/M/G/T and KiB.. are powers of
    1024, KB.. of 1000); raises UserError naming `option` for anything else."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", text)
    unit = UNITS.get(match.group(2).lower()) if match else None
    if unit is None or float(match.group(1)) <= 0 or float(match.group(1)) * unit < 2**20:
        raise UserError(
            f"{option} {text[:60]!r} is not a memory size of at least 1 MiB",
            f"write {option} with a unit, e.g. {option} 16GiB, 40GB or 80G",
        )
    return int(float(match.group(1)) * unit)
