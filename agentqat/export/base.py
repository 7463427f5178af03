"""Exports: a strategy's quantized model written in a format an engine loads, with what the arena measured.

`prepare_source` quantizes every linear module with the arena's own code (its Workbench: model, calibration,
level database), so the exported weights are exactly the values the arena scored. An exporter is a function
`(ExportSource, out directory) -> None` registered under its format name; `export` runs one and then writes
`agentqat-export.json` beside the weights: the strategy, the arena's figures, the effective bits and the bytes
of the weight files written.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from agentqat import defaults
from agentqat.arena.config import Arena
from agentqat.arena.match import Workbench
from agentqat.engines.ggml_blocks import GgmlBlocks, decode
from agentqat.engines.levels import EngineFiles
from agentqat.errors import UserError
from agentqat.export.gguf_types import in_own_blocks
from agentqat.models import BUILTIN_MODELS, builtin_gguf_path, load_facts
from agentqat.polish.ggml_grid import GGML_SUFFIX, GGML_TYPES_KEY
from agentqat.progress import Reporter, phase
from agentqat.quant.registry import quantize_blocks
from agentqat.strategy.apply import apply_strategy, restore
from agentqat.strategy.bits import strategy_bits
from agentqat.strategy.deploy import unservable
from agentqat.strategy.document import parse_strategy
from agentqat.strategy.resolve import ModuleConfig, needs_calibration, resolve_strategy

METADATA_FILE = "agentqat-export.json"
WEIGHT_SUFFIXES = (".safetensors", ".gguf", ".bin")
METADATA_VERSION = 1


@dataclass(frozen=True)
class ExportModule:
    """One quantizable linear module: its resolved config, base weight and the arena's dequantized weight."""

    name: str  # e.g. "model.layers.0.self_attn.q_proj"
    config: ModuleConfig
    original: torch.Tensor  # base weight, float32 (out x in)
    quantized: torch.Tensor  # the arena's dequantized weight, float32: the values the arena measured
    input_divisor: torch.Tensor | None  # SmoothQuant-style input scales (None without)
    grid: tuple[torch.Tensor, torch.Tensor] | None = None  # (scale, zero), each [groups, 1], of the grid the values
    # lie on where it is not the one the base weight gives (a polished module)
    blocks: GgmlBlocks | None = None  # a module polished inside a GGML type: its blocks, which hold `quantized`


@dataclass(frozen=True)
class ExportSource:
    """Everything an exporter needs: the strategy, its arena, the base model and every module's weights."""

    document: dict
    arena: Arena
    model_directory: Path
    gguf_path: Path | None  # the GGUF file the base model came from (built-in models and .gguf specs), else None
    modules: dict[str, ExportModule]
    effective_bits: float  # agentqat.strategy.bits' count for the strategy
    figures: dict  # the arena's figures for it (perplexity, kl, bits, stage, ...); {} when not measured
    engine: EngineFiles | None = None  # an [engine] arena's llama.cpp files: base, imatrix, level files by type


class ExportError(UserError):
    """A strategy (or a model) the format cannot hold: names the modules (none: the model as a whole) and the reason."""

    def __init__(self, format: str, reason: str, modules: list[str], fix: str):
        self.modules = list(modules)
        shown = ", ".join(self.modules[:3]) + (f" and {len(self.modules) - 3} more" if len(self.modules) > 3 else "")
        where = f"cannot hold {len(self.modules)} module(s) ({shown})" if self.modules else "cannot export this model"
        super().__init__(f"{format} {where}: {reason}", fix)


Exporter = Callable[[ExportSource, Path], None]
EXPORTERS: dict[str, Exporter] = {}
ANY_TARGET = defaults.DEPLOY


def register_exporter(name: str) -> Callable[[Exporter], Exporter]:
    """Returns a decorator registering an exporter under the format `name`."""

    def register(exporter: Exporter) -> Exporter:
        if name in EXPORTERS:
            raise ValueError(f"exporter {name!r} registered twice")
        EXPORTERS[name] = exporter
        return exporter

    return register


def check_servable(source: ExportSource, format: str, deploy: str) -> None:
    """Returns None when the deploy target's engine runs every module of the strategy (`agentqat.strategy.deploy`); ExportError
    naming the modules and each rule they break otherwise."""
    facts = load_facts(source.arena.model)
    broken = unservable(resolve_strategy(parse_strategy(source.document), facts), facts, deploy)
    if broken:
        modules = [info.name for infos in broken.values() for info in infos]
        raise ExportError(format, f"{deploy}: " + "; ".join(broken), modules, f"make them servable on {deploy} (agentqat validate --deploy {deploy} names each)")


def weight_files(out: Path) -> dict[str, int]:
    """Returns the weight files under `out` (relative path -> bytes)."""
    return {str(p.relative_to(out)): p.stat().st_size for p in sorted(out.rglob("*")) if p.suffix in WEIGHT_SUFFIXES}


def check_destination(format: str, out: Path, deploy: str = ANY_TARGET) -> None:
    """Returns None when `format` has an exporter, `deploy` is a known target and `out` is new or empty;
    UserError otherwise (call it before the expensive work)."""
    if format not in EXPORTERS:
        raise UserError(f"no exporter for format {format!r}", f"use one of {', '.join(sorted(EXPORTERS))}")
    if deploy not in defaults.DEPLOY_TARGETS:
        raise UserError(f"unknown deploy target {deploy!r}", f"use one of {', '.join(defaults.DEPLOY_TARGETS)}")
    if Path(out).exists() and (not Path(out).is_dir() or any(Path(out).iterdir())):
        raise UserError(f"export directory {out} exists and is not empty", "pass a new or empty --out directory")


def export(source: ExportSource, format: str, out: Path, deploy: str = ANY_TARGET) -> Path:
    """Returns `out` after writing the strategy's model in `format` and its metadata file there; with a deploy
    target, ExportError first for the modules its engine cannot run (`agentqat.strategy.deploy`), then the format's own
    rules (what it can hold) as it writes."""
    check_destination(format, out, deploy)
    check_servable(source, format, deploy)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    EXPORTERS[format](source, out)
    files = weight_files(out)
    metadata = {
        "schema_version": METADATA_VERSION,
        "format": format,
        "deploy": deploy,
        "model": source.arena.model,
        "arena": source.arena.name,
        "strategy": source.document,
        "figures": source.figures,
        "effective_bits": source.effective_bits,
        "weight_files": files,
        "weight_bytes": sum(files.values()),
    }
    (out / METADATA_FILE).write_text(json.dumps(metadata, indent=2) + "\n")
    return out


def _gguf_path(model: str) -> Path | None:
    """Returns the GGUF file a model spec comes from (a built-in's or a .gguf path), else None."""
    if model in BUILTIN_MODELS:
        return builtin_gguf_path(model)
    return Path(model).expanduser() if model.endswith(".gguf") else None


@dataclass(frozen=True)
class PolishedFile:
    """A polish directory's weights.safetensors: the trained weights, the int grids (scale, zero) they lie on, and
    the GGML blocks of the modules trained inside a GGML type."""

    weights: dict[str, torch.Tensor]
    grids: dict[str, tuple[torch.Tensor, torch.Tensor]]
    blocks: dict[str, GgmlBlocks]


def polished_weights(directory: Path) -> PolishedFile:
    """Returns the trained weights of a polish directory (weights.safetensors: NAME with NAME.scale and NAME.zero, or
    NAME.ggml and its type in the metadata); UserError when the directory holds none or its blocks do not hold
    its weights."""
    from safetensors import safe_open


    path = directory / "weights.safetensors"
    if not path.is_file():
        raise UserError(f"{directory} holds no polished weights (weights.safetensors)", "pass a directory agentqat polish wrote")
    with safe_open(str(path), "pt") as handle:
        stored = {name: handle.get_tensor(name) for name in handle.keys()}
        types = json.loads((handle.metadata() or {}).get(GGML_TYPES_KEY, "{}"))
    weights = {name: tensor for name, tensor in stored.items() if not name.endswith((".scale", ".zero", GGML_SUFFIX))}
    grids = {name: (stored[f"{name}.scale"], stored[f"{name}.zero"]) for name in weights if name not in types}
    blocks = {name: decode(stored[f"{name}{GGML_SUFFIX}"].numpy(), kind, weights[name].shape[1]) for name, kind in types.items()}
    differing = [name for name, held in blocks.items() if not torch.equal(held.values(), weights[name])]
    if differing:
        raise UserError(f"{path}: the GGML blocks of {', '.join(differing[:3])} do not hold their weights", "polish again")
    return PolishedFile(weights, grids, blocks)


def _own_blocks(name: str, config: ModuleConfig, original: torch.Tensor, levels, calibration) -> GgmlBlocks | None:
    """Returns the GGML blocks a module's method found inside its type (read from the level database where the level
    is one, else found again from the base weight), or None for other methods."""
    if not in_own_blocks(config):
        return None
    held = levels.blocks(name, config) if levels is not None else None
    return held or quantize_blocks(original, config.weight, calibration.stats.get(name) if calibration else None)


def prepare_source(
    document: dict, arena: Arena, reporter: Reporter | None = None, figures: dict | None = None, polished: Path | None = None,
) -> ExportSource:  # fmt: skip
    """Returns the export source of a strategy on an arena: every module quantized by the arena's own code (its
    calibration and level database), in float32 whatever the strategy's compute dtype, the modules of a polish
    directory's weights.safetensors (`polished`, agentqat polish) taking their trained weights and grids;
    StrategyError when the document is not a valid strategy for the arena's model."""
    workbench = Workbench(arena, reporter=reporter)
    facts = workbench.loaded.facts
    resolved = resolve_strategy(parse_strategy(document), facts)
    calibration = workbench.calibration(arena.calibration_windows) if needs_calibration(resolved) else None
    levels = workbench.levels()
    model = workbench.loaded.model
    trained = polished_weights(Path(polished)) if polished is not None else PolishedFile({}, {}, {})
    with phase(reporter, "quantizing for export", detail=f"{len(facts.linears)} modules"):
        in_fp32 = dataclasses.replace(resolved, compute_dtype="fp32")
        applied = apply_strategy(model, in_fp32, calibration, levels=levels, overrides=trained.weights)
        try:
            modules = {}
            for info in facts.linears:
                current = model.get_submodule(info.name)  # a QuantizedLinear where the strategy quantizes
                original = applied.originals.get(info.name, current).weight.detach().to(torch.float32)
                modules[info.name] = ExportModule(
                    name=info.name,
                    config=resolved.modules[info.name],
                    original=original,
                    quantized=current.weight.detach().to(torch.float32),
                    input_divisor=getattr(current, "input_divisor", None),
                    grid=trained.grids.get(info.name),
                    blocks=trained.blocks.get(info.name) or _own_blocks(info.name, resolved.modules[info.name], original, levels, calibration),
                )
        finally:
            restore(model, applied)
    bits = strategy_bits(resolved, facts, applied.outlier_counts)
    return ExportSource(
        document=document,
        arena=arena,
        model_directory=workbench.loaded.directory,
        gguf_path=_gguf_path(arena.model),
        modules=modules,
        effective_bits=bits.bits_per_weight,
        figures=dict(figures or {}),
        engine=workbench.engine_files() if arena.engine is not None else None,
    )
