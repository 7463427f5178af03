"""The level database on disk: one safetensors file per level holding every linear module's quantized weight.

    <cache>/levels/<model>-<calibration key>/<level name>-<level id>.safetensors

The directory is keyed by the model and its calibration (the calibration key hashes the model, its directory,
the corpus and the calibration tokens); a file by its level's full config. Weights are stored exactly as the
quantizer returns them (float32), so a match reading them computes what quantizing on the fly computes. Each
level's file is written to a temporary name and renamed when complete, under a file lock: a killed build leaves
only finished levels, and the next build (from any process) does the rest. Readers open the files with
`safe_open`, which maps them: two workers share the page cache instead of each loading every level.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Mapping
from dataclasses import asdict
from pathlib import Path

import torch
from filelock import FileLock
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from agentqat.apply import quantize_module
from agentqat.calibration import Calibration
from agentqat.defaults import cache_dir
from agentqat.levels.ladder import level_name
from agentqat.models import quantizable_linears
from agentqat.progress import Reporter, phase
from agentqat.quant.ggml_engine import is_engine_made
from agentqat.resolve import ModuleConfig, module_needs_calibration

EngineWeights = Callable[[ModuleConfig], Mapping[str, torch.Tensor]]  # a level llama.cpp made: module -> weight
DATABASE_FORMAT = 1  # bump when what a level file holds changes, so old files are not read


def level_file(config: ModuleConfig) -> str:
    """Returns the file name of a level: its readable name and a hash of its whole config and the format."""
    digest = hashlib.sha256(json.dumps([DATABASE_FORMAT, asdict(config)], sort_keys=True).encode()).hexdigest()
    return f"{level_name(config)}-{digest[:12]}.safetensors"


def database_directory(model_name: str, calibration: Calibration) -> Path:
    """Returns the directory of the database for a model and calibration."""
    return cache_dir() / "levels" / f"{model_name}-{calibration.key}"


class LevelDatabase:
    """Read access to a built database: the quantized weight of a module at a level, mapped from disk."""

    def __init__(self, directory: Path, levels: tuple[ModuleConfig, ...], calibration_key: str):
        self.directory = directory
        self.levels = levels
        self.calibration_key = calibration_key
        self._files = {config: safe_open(str(directory / level_file(config)), framework="pt") for config in levels}

    def weight(self, name: str, config: ModuleConfig, calibration_key: str | None) -> torch.Tensor | None:
        """Returns module `name`'s weight at level `config`, or None when `config` is no level of the database or
        reads calibration other than the database's (a request with other calibration windows)."""
        handle = self._files.get(config)
        if handle is None or (module_needs_calibration(config) and calibration_key != self.calibration_key):
            return None
        return handle.get_tensor(name)


def missing_levels(directory: Path, levels: tuple[ModuleConfig, ...]) -> list[ModuleConfig]:
    """Returns the levels whose files are not (completely) written in `directory`."""
    return [config for config in levels if not (directory / level_file(config)).exists()]


def build_database(
    model: nn.Module, model_name: str, calibration: Calibration, levels: tuple[ModuleConfig, ...],
    reporter: Reporter | None = None, engine_weights: EngineWeights | None = None,
) -> Path:  # fmt: skip
    """Quantizes every linear module of `model` at every level not yet on disk (phase "building the level
    database", a step per module and level) and returns the database directory; a level llama.cpp makes
    (`is_engine_made`) is read from `engine_weights(config)` instead. Safe to call from several processes at once:
    one builds under the lock, the others wait and then find the files."""
    directory = database_directory(model_name, calibration)
    directory.mkdir(parents=True, exist_ok=True)
    with FileLock(str(directory / "build.lock")):
        for staging in directory.glob("*.tmp"):  # a level a killed build was writing
            staging.unlink()
        missing = missing_levels(directory, levels)
        if not missing:
            return directory
        linears = quantizable_linears(model)
        detail = f"{len(missing)} levels x {len(linears)} modules into {directory}"
        with phase(reporter, "building the level database", total=len(missing) * len(linears), detail=detail) as step:
            for config in missing:
                weights = {}
                if is_engine_made(config.weight):
                    if engine_weights is None:
                        raise ValueError(f"level {level_name(config)} is made by llama.cpp; the database needs its engine")
                    made = engine_weights(config)
                    weights = {name: made[name].contiguous() for name in linears}
                    step(len(linears))
                for name, linear in linears.items():
                    if name in weights:
                        continue
                    stats = calibration.stats.get(name)
                    weights[name] = quantize_module(linear, config, stats, torch.float32).weight.contiguous()
                    step()
                staging = directory / (level_file(config) + ".tmp")
                save_file(weights, str(staging), metadata={"level": json.dumps(asdict(config))})
                os.replace(staging, directory / level_file(config))
    return directory


def open_database(
    model: nn.Module, model_name: str, calibration: Calibration, levels: tuple[ModuleConfig, ...],
    reporter: Reporter | None = None, engine_weights: EngineWeights | None = None,
) -> LevelDatabase:  # fmt: skip
    """Returns the database of `levels` for the model and calibration, building the levels it lacks first."""
    directory = build_database(model, model_name, calibration, levels, reporter, engine_weights)
    return LevelDatabase(directory, levels, calibration.key)
