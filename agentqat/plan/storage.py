"""What the level database and the calibration statistics take on disk, from a model's shape and a ladder.

A level stores each linear module as `agentqat.levels.database.module_bytes` counts it: packed (codes at their
width, scales and zero points) for the integer grid's methods, float32 (4 bytes a weight) for the formats with no
packed form yet. Beside it, what the level took as float32, as the database stored every level before (format 1).
"""

from __future__ import annotations

from dataclasses import dataclass

from agentqat.levels import level_config, level_name
from agentqat.levels.database import FLOAT32_BYTES, module_bytes, packs
from agentqat.plan.shape import ModelShape, hessian_entries
from agentqat.strategy.document import WeightGene
from agentqat.strategy.resolve import ModuleConfig

EXAMPLE_LEVEL = WeightGene(bits=4, group_size=64)  # sized for an arena without a ladder


@dataclass(frozen=True)
class LevelSize:
    """One level's bytes on disk as the database stores it, and as float32 (how every level was stored before)."""

    name: str
    bytes: int
    float32_bytes: int
    packed: bool  # False: float32 on disk too (a format with no packed form yet)


@dataclass(frozen=True)
class DatabaseSize:
    """A ladder's levels on disk, and the calibration statistics cached beside them."""

    levels: tuple[LevelSize, ...]
    calibration_bytes: int
    declared: bool  # False: the arena has no ladder and `levels` holds one example level

    @property
    def bytes(self) -> int:
        return sum(level.bytes for level in self.levels) if self.declared else 0

    @property
    def float32_bytes(self) -> int:
        return sum(level.float32_bytes for level in self.levels) if self.declared else 0


def level_size(shape: ModelShape, config: ModuleConfig) -> LevelSize:
    """Returns the bytes of one level of every linear module, as stored and as float32."""
    stored = sum(module_bytes(config, info) for info in shape.facts.linears)
    return LevelSize(level_name(config), stored, FLOAT32_BYTES * shape.linear_weights, packs(config))


def database_size(shape: ModelShape, ladder: tuple[ModuleConfig, ...]) -> DatabaseSize:
    """Returns the database's size for `ladder` (one example level, W4 g64, when the ladder is empty)."""
    declared = bool(ladder)
    levels = ladder if declared else (level_config(EXAMPLE_LEVEL),)
    calibration = hessian_entries(shape.facts) * FLOAT32_BYTES
    return DatabaseSize(tuple(level_size(shape, config) for config in levels), calibration, declared)
