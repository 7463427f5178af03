"""What the level database and the calibration statistics take on disk, from a model's shape and a ladder.

Today every level stores every linear module's weight as float32 (agentqat.levels.database): 4 bytes per weight
per level. A packed store would keep each level's integer codes, scales and zeros: the bits agentqat.bits counts.
"""

from __future__ import annotations

from dataclasses import dataclass

from agentqat.bits import module_bits
from agentqat.levels import level_config, level_name
from agentqat.plan.shape import ModelShape, hessian_entries
from agentqat.resolve import ModuleConfig
from agentqat.strategy import WeightGene

FLOAT32_BYTES = 4
EXAMPLE_LEVEL = WeightGene(bits=4, group_size=64)  # sized for an arena without a ladder


@dataclass(frozen=True)
class LevelSize:
    """One level's bytes on disk: as stored today (float32) and packed (codes, scales, zeros)."""

    name: str
    float32_bytes: int
    packed_bytes: int


@dataclass(frozen=True)
class DatabaseSize:
    """A ladder's levels on disk, and the calibration statistics cached beside them."""

    levels: tuple[LevelSize, ...]
    calibration_bytes: int
    declared: bool  # False: the arena has no ladder and `levels` holds one example level

    @property
    def float32_bytes(self) -> int:
        return sum(level.float32_bytes for level in self.levels) if self.declared else 0

    @property
    def packed_bytes(self) -> int:
        return sum(level.packed_bytes for level in self.levels) if self.declared else 0


def level_size(shape: ModelShape, config: ModuleConfig) -> LevelSize:
    """Returns the bytes of one level of every linear module, float32 and packed."""
    packed_bits = sum(module_bits(config, info, 0).total for info in shape.facts.linears)
    return LevelSize(level_name(config), FLOAT32_BYTES * shape.linear_weights, -(-packed_bits // 8))


def database_size(shape: ModelShape, ladder: tuple[ModuleConfig, ...]) -> DatabaseSize:
    """Returns the database's size for `ladder` (one example level, W4 g64, when the ladder is empty)."""
    declared = bool(ladder)
    levels = ladder if declared else (level_config(EXAMPLE_LEVEL),)
    calibration = hessian_entries(shape.facts) * FLOAT32_BYTES
    return DatabaseSize(tuple(level_size(shape, config) for config in levels), calibration, declared)
