"""The level database on disk: one safetensors file per level holding every linear module's quantized weight.

    <cache>/levels/<model>-<calibration key>/<level name>-<level id>.safetensors

The directory is keyed by the model and its calibration (the calibration key hashes the model, its directory,
the corpus and the calibration tokens); a file by its level's full config and the database format. Each level's
file is written to a temporary name and renamed when complete, under a file lock: a killed build leaves only
finished levels, and the next build (from any process) does the rest. Readers open the files with `safe_open`,
which maps them: two workers share the page cache instead of each loading every level.

What a level file holds (format 2):
- packed, for the integer-grid methods (format "int": rtn, gptq, awq, hqq): each module's codes bit-packed at
  their width, its scales (float16, or int8 exponents for power-of-two scales), its zero points (packed like the
  codes; float16 for hqq's float zeros; none on symmetric grids) and AWQ's per-input-channel divisor (float32), in
  the layout `agentqat.levels.packing` describes. A read unpacks and dequantizes them on the reader's device into the float32
  weight the quantizer returns, bit for bit: `pack` checks every module as it is written, and a module that would
  not read back exactly is stored float32 instead.
- GGML blocks, for the methods that work inside a GGML type (`agentqat.quant.ggml_gptq`): each module's blocks as a
  GGUF file stores them (uint8 rows, `NAME.ggml`; metadata "ggml" names the type and shape), decoded on read into
  the float32 weight ggml computes; a GGUF export writes those bytes.
- float32, as the quantizer returns it, for everything else: the formats with no packed form yet (bitsandbytes'
  nf4 / fp4, fp8_e4m3, llm_int8, the GGUF block types quantized in Python), bits 16, and the levels llama.cpp
  makes (`is_engine_made`: read dequantized from the engine's own GGUF file through `engine_weights`, unchanged).
Files of format 1 (every module float32, written before levels were packed) are still found and read: a level
with a format-1 file is not built again (delete the file to have it rebuilt packed).
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

from agentqat.defaults import cache_dir
from agentqat.engines.ggml_blocks import GgmlBlocks, decode, encode
from agentqat.layerwise import HOST
from agentqat.levels.ladder import level_name
from agentqat.levels.packing import SUFFIXES, pack, packed_size, unpack
from agentqat.models import quantizable_linears
from agentqat.progress import Reporter, phase
from agentqat.quant.base import ActivationQuant, LayerStats
from agentqat.quant.ggml_engine import is_engine_made
from agentqat.quant.grid import code_range
from agentqat.quant.registry import changed_settings, method_of, quantize_blocks, quantize_codes
from agentqat.quant.schemes import keeps_outliers
from agentqat.quant.storage import Shape
from agentqat.strategy.apply import quantize_module
from agentqat.strategy.calibration import Calibration
from agentqat.strategy.resolve import ModuleConfig, module_needs_calibration

EngineWeights = Callable[[ModuleConfig], Mapping[str, torch.Tensor]]  # a level llama.cpp made: module -> weight
DATABASE_FORMAT = 2  # bump when what a level file holds changes, so old files are not read
READABLE_FORMATS = (DATABASE_FORMAT, 1)  # where a level is looked for, newest first (1: every module float32)
FLOAT32_BYTES = 4
GGML_SUFFIX = "ggml"  # a module's GGML blocks: NAME.ggml


def level_file(config: ModuleConfig, database_format: int = DATABASE_FORMAT) -> str:
    """Returns the file name of a level: its readable name and a hash of its whole config and the format (and of
    its method's settings where `registry.configure` changed them from their defaults)."""
    changed = changed_settings(config.weight)
    keyed = [database_format, asdict(config)] + ([changed] if changed else [])
    digest = hashlib.sha256(json.dumps(keyed, sort_keys=True).encode()).hexdigest()
    return f"{level_name(config)}-{digest[:12]}.safetensors"


def stored_level(directory: Path, config: ModuleConfig) -> Path | None:
    """Returns the file holding a level in `directory` (the newest readable format found), or None."""
    for database_format in READABLE_FORMATS:
        path = directory / level_file(config, database_format)
        if path.exists():
            return path
    return None


def packs(config: ModuleConfig) -> bool:
    """Returns whether the database stores a level packed rather than float32: a plain weight quantization (no
    smoothing, no outliers) below 16 bits whose method has codes (the integer grid's)."""
    plain = not keeps_outliers(config.outliers) and config.activation == ActivationQuant()
    return plain and config.weight.bits < 16 and method_of(config.weight).codes is not None


def holds_blocks(config: ModuleConfig) -> bool:
    """Returns whether the database stores a level as GGML blocks: a plain weight quantization whose method works
    inside a GGML type."""
    plain = not keeps_outliers(config.outliers) and config.activation == ActivationQuant()
    return plain and config.weight.bits < 16 and method_of(config.weight).blocks is not None


def module_bytes(config: ModuleConfig, shape: Shape) -> int:
    """Returns the bytes a level stores of one module of this shape (tensor data; the file's header of about 200
    bytes a module aside): float32 weights, or the packed codes and the scales and zeros the method's storage rule
    counts (`agentqat.quant.storage`; AWQ adds its float32 divisor, 4 bytes an input channel, not counted here)."""
    weights = shape.out_features * shape.in_features
    if holds_blocks(config):
        storage = method_of(config.weight).storage(config.weight, shape)
        return (config.weight.bits * weights + storage.scale_bits) // 8
    if not packs(config):
        return FLOAT32_BYTES * weights
    storage = method_of(config.weight).storage(config.weight, shape)
    return packed_size(weights, config.weight.bits) + -(-storage.scale_bits // 8) + -(-storage.zero_bits // 8)


def database_directory(model_name: str, calibration: Calibration) -> Path:
    """Returns the directory of the database for a model and calibration."""
    return cache_dir() / "levels" / f"{model_name}-{calibration.key}"


class _LevelFile:
    """One level's file, mapped: float32 modules by name, packed modules by name and suffix (metadata "packed"
    names them with their shapes)."""

    def __init__(self, path: Path, config: ModuleConfig, device: torch.device):
        self.path = path
        self.handle = safe_open(str(path), framework="pt", device=str(device))
        self.device = device
        metadata = self.handle.metadata() or {}
        packed = json.loads(metadata.get("packed", "{}"))
        self.blocks_of = {name: (kind, columns) for name, (kind, columns) in json.loads(metadata.get(GGML_SUFFIX, "{}")).items()}
        self.shapes = {name: (shape[0], shape[1]) for name, shape in packed.items()}
        self.bits = config.weight.bits
        self.qmin = code_range(self.bits, config.weight.symmetric)[0] if self.shapes else 0
        keys = set(self.handle.keys())
        self.suffixes = {name: {s for s in SUFFIXES if f"{name}.{s}" in keys} for name in self.shapes}

    def blocks(self, name: str) -> GgmlBlocks | None:
        if name not in self.blocks_of:
            return None
        kind, columns = self.blocks_of[name]
        return decode(self.handle.get_tensor(f"{name}.{GGML_SUFFIX}").cpu().numpy(), kind, columns)

    def weight(self, name: str) -> torch.Tensor:
        if name in self.blocks_of:
            return self.blocks(name).values().to(self.device)
        shape = self.shapes.get(name)
        if shape is None:
            return self.handle.get_tensor(name)
        tensor = lambda suffix: self.handle.get_tensor(f"{name}.{suffix}")  # noqa: E731
        return unpack(tensor, self.suffixes[name], shape, self.bits, self.qmin)


class LevelDatabase:
    """Read access to a built database: the quantized weight of a module at a level, mapped from disk."""

    def __init__(self, directory: Path, levels: tuple[ModuleConfig, ...], calibration_key: str, device: torch.device = HOST):
        self.directory = directory
        self.levels = levels
        self.calibration_key = calibration_key
        self._files = {config: _LevelFile(_built(directory, config), config, device) for config in levels}

    def weight(self, name: str, config: ModuleConfig, calibration_key: str | None) -> torch.Tensor | None:
        """Returns module `name`'s float32 weight at level `config` (what quantizing it computes, bit for bit; read
        and dequantized on the database's device), or
        None when `config` is no level of the database or reads calibration other than the database's (a request
        with other calibration windows)."""
        level = self._files.get(config)
        if level is None or (module_needs_calibration(config) and calibration_key != self.calibration_key):
            return None
        return level.weight(name)

    def blocks(self, name: str, config: ModuleConfig) -> GgmlBlocks | None:
        """Returns module `name`'s GGML blocks at level `config` where the level holds blocks, else None."""
        level = self._files.get(config)
        return level.blocks(name) if level is not None else None

    def path(self, config: ModuleConfig) -> Path:
        """Returns the file a level is read from."""
        return self._files[config].path

    def packed_modules(self, config: ModuleConfig) -> int:
        """Returns how many modules a level stores packed (the others are float32)."""
        return len(self._files[config].shapes)

    @property
    def bytes(self) -> int:
        """Returns the size of the level files this database reads."""
        return sum(level.path.stat().st_size for level in self._files.values())


def _built(directory: Path, config: ModuleConfig) -> Path:
    path = stored_level(directory, config)
    if path is None:
        raise FileNotFoundError(f"level {level_name(config)} is not built in {directory}")
    return path


def missing_levels(directory: Path, levels: tuple[ModuleConfig, ...]) -> list[ModuleConfig]:
    """Returns the levels with no (completely written) file in `directory`, of any readable format."""
    return [config for config in levels if stored_level(directory, config) is None]


def packed_module(linear: nn.Module, config: ModuleConfig, stats: LayerStats | None) -> dict[str, torch.Tensor] | None:
    """Returns the tensors storing a module at a packed level (keys are suffixes), or None where they would not
    read back exactly what quantizing computes."""
    codes = quantize_codes(linear.weight.detach().to(torch.float32), config.weight, stats)
    return pack(codes, config.weight.bits) if codes is not None else None


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
                weights, packed, blocks = {}, {}, {}
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
                    stored = packed_module(linear, config, stats) if packs(config) else None
                    if holds_blocks(config):
                        held = quantize_blocks(linear.weight.detach().cpu(), config.weight, stats)
                        weights[f"{name}.{GGML_SUFFIX}"] = torch.from_numpy(encode(held))
                        blocks[name] = (held.type_name, held.shape[1])
                    elif stored is not None:
                        weights.update((f"{name}.{suffix}", tensor.cpu()) for suffix, tensor in stored.items())
                        packed[name] = tuple(linear.weight.shape)
                    else:
                        weights[name] = quantize_module(linear, config, stats, torch.float32).weight.contiguous().cpu()
                    step()
                metadata = {"level": json.dumps(asdict(config)), "format": str(DATABASE_FORMAT), "packed": json.dumps(packed),
                            GGML_SUFFIX: json.dumps(blocks)}  # fmt: skip
                staging = directory / (level_file(config) + ".tmp")
                save_file(weights, str(staging), metadata=metadata)
                os.replace(staging, directory / level_file(config))
    return directory


def open_database(
    model: nn.Module, model_name: str, calibration: Calibration, levels: tuple[ModuleConfig, ...],
    reporter: Reporter | None = None, engine_weights: EngineWeights | None = None, device: torch.device = HOST,
) -> LevelDatabase:  # fmt: skip
    """Returns the database of `levels` for the model and calibration, building the levels it lacks first (quantizing
    where the model's weights are); its reads are dequantized on `device`."""
    directory = build_database(model, model_name, calibration, levels, reporter, engine_weights)
    return LevelDatabase(directory, levels, calibration.key, device)
