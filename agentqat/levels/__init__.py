"""The level database (issue 15): every linear module quantized once at every level of an arena's ladder,
stored on disk and shared by workers and runs, so that a match over ladder levels costs a weight swap."""

from agentqat.levels.database import LevelDatabase, build_database, database_directory, open_database
from agentqat.levels.ladder import arena_ladder, ladder_configs, level_config, level_name

__all__ = [
    "LevelDatabase",
    "arena_ladder",
    "build_database",
    "database_directory",
    "ladder_configs",
    "level_config",
    "level_name",
    "open_database",
]
