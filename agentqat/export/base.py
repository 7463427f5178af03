"""The export interface: what an exporter reads (ExportSource) and the registry of exporters by format name.

A minimal copy of the agreed interface (branch export-ct holds the full module)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from agentqat.arena.config import Arena
from agentqat.errors import UserError
from agentqat.resolve import ModuleConfig


@dataclass(frozen=True)
class ExportModule:
    """One linear module: its config, base weight and the arena's dequantized weight (float32, out x in)."""

    name: str
    config: ModuleConfig
    original: torch.Tensor
    quantized: torch.Tensor
    input_divisor: torch.Tensor | None


@dataclass(frozen=True)
class ExportSource:
    """What an export reads: the strategy, the arena, the model and each linear module's weights."""

    document: dict
    arena: Arena
    model_directory: Path
    gguf_path: Path | None
    modules: dict[str, ExportModule]
    effective_bits: float
    figures: dict


class ExportError(UserError):
    """A strategy the format cannot hold: names the modules and the reason."""


EXPORTERS: dict[str, Callable[[ExportSource, Path], None]] = {}


def register_exporter(name: str):
    """Returns a decorator that registers an exporter under a format name."""

    def register(exporter: Callable[[ExportSource, Path], None]) -> Callable[[ExportSource, Path], None]:
        EXPORTERS[name] = exporter
        return exporter

    return register
