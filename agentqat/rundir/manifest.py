"""What a run is, written once to its manifest.json and validated when read back: `Manifest` and `LlmSettings`.

Every run directory (made by the CLI, a benchmark or a test through `run_evolve` / `run_baseline`) carries the
full settings it was started with, so that resuming it needs nothing else.
"""

from __future__ import annotations

import platform
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from agentqat import defaults
from agentqat.arena.config import Arena
from agentqat.errors import UserError
from agentqat.evolution.loop import EvolveSettings
from agentqat.generators import GENERATORS
from agentqat.models import bos_policy
from agentqat.rundir.paths import MANIFEST_FILE
from agentqat.rundir.store import RUN_SCHEMA_VERSION, read_json_object, write_json_atomic
from agentqat.strategy.document import SCHEMA_VERSION

VERSIONED_PACKAGES = ("agentqat", "torch", "transformers", "ray", "bitsandbytes")


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class LlmSettings(_Frozen):
    """How the LLM generator reaches its model: a vLLM server (managed, or the one at `url`), any OpenAI-compatible
    server at `url` with structured outputs ("openai", `model` as that server names it), or Outlines over
    transformers in process; `fallback` goes on with the random generator when the server fails. Ablations:
    `reflection` false leaves the lessons out of the prompts, `sensitivities` false leaves the per-layer
    sensitivities out ("not measured")."""

    backend: Literal["vllm", "openai", "transformers"] = "vllm"
    model: str = defaults.DEFAULT_MODEL
    url: str | None = None
    fallback: bool = False
    reflection: bool = True
    sensitivities: bool = True
    gpu_fraction: float | None = None  # a managed server's share of the GPU's memory (None: vLLM on the CPU)

    @property
    def managed_server(self) -> bool:
        """Returns whether the run starts (and stops) its own vLLM server."""
        return self.backend == "vllm" and not self.url


class Manifest(_Frozen):
    """A run's manifest: its kind, arena and settings (evolve: search settings, the shared prior's documents that
    generation 0 plays and, for the LLM generator, its LLM settings; which sensitivities generators that use them
    get: "probes", one 3-bit probe per layer, or "map", the arena's sensitivity map from `agentqat sensitivity`;
    baseline: stage, seed and number of requests), schema versions and package versions (agentqat's included).

    Also, for evolve runs: `preparation`, how what a generator measures before its search (the knapsack's unit
    costs) is paid for: "shared", measured once per arena outside the run and charged to no run, or "in-run"
    (runs recorded before it was shared: played in the run and charged to its budget); `prompt_template`, the
    version of the LLM generator's prompt templates (prompts/ at the top level; None for other generators);
    `generator_settings`, the constants of the generator's modules (`generator_settings`); `workers`, the
    evaluator actors the run started with (--workers, or the default it resolved to). Older manifests lack the
    last three (None, {})."""

    schema_version: int = RUN_SCHEMA_VERSION
    kind: Literal["evolve", "baseline"]
    arena: Arena
    settings: EvolveSettings | None = None
    llm: LlmSettings | None = None
    prior: tuple[dict, ...] = ()
    sensitivity: Literal["probes", "map"] = "probes"
    stage: str | None = None
    seed: int | None = None
    requests: int | None = None
    strategy_schema_version: int = SCHEMA_VERSION
    versions: dict[str, str] = {}
    window_bos: int | None = None  # the BOS token id every window opens with; None: windows start with text
    preparation: Literal["in-run", "shared"] = "in-run"
    prompt_template: str | None = None
    generator_settings: dict[str, object] = {}
    workers: int | None = None

    @model_validator(mode="before")
    @classmethod
    def _llm_runs_have_llm_settings(cls, data: object) -> object:
        """Fills the default LLM settings of an LLM run recorded without them (older benchmark runs used a
        managed vLLM server on the default model)."""
        if isinstance(data, dict) and isinstance(data.get("settings"), dict):
            if data["settings"].get("generator") == "llm" and data.get("llm") is None:
                return {**data, "llm": {}}
        return data

    @model_validator(mode="after")
    def _complete(self) -> Manifest:
        if self.schema_version != RUN_SCHEMA_VERSION:
            raise ValueError(f"schema_version {self.schema_version}: this agentqat reads {RUN_SCHEMA_VERSION}")
        if self.kind == "evolve" and self.settings is None:
            raise ValueError("an evolve run needs its settings")
        if self.kind == "baseline" and (self.stage is None or self.seed is None):
            raise ValueError("a baseline run needs its stage and seed")
        return self


def package_versions() -> dict[str, str]:
    """Returns the versions of Python and of the packages a result depends on."""
    from importlib.metadata import PackageNotFoundError, version

    versions = {"python": platform.python_version()}
    for name in VERSIONED_PACKAGES:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            continue
    return versions


def generator_settings(generator: str) -> dict[str, object]:
    """Returns the settings of a generator that no manifest field holds: the upper-case constants (numbers, strings,
    flags and JSON containers of them) of the module that defines it and, for generators built on the LLM's edits
    or prompts, of agentqat.generators.llm's modules, as "module.NAME" -> value."""
    import importlib
    import json


    factory = GENERATORS[generator]
    names = [factory.__module__]
    if generator.startswith("llm"):
        names += [f"agentqat.generators.llm.{part}" for part in ("generator", "prompts", "reflection", "edits", "schema_sampler")]
    settings: dict[str, object] = {}
    for name in dict.fromkeys(names):
        module = importlib.import_module(name)
        for key, value in sorted(vars(module).items()):
            if not key.isupper() or key.startswith("_") or not isinstance(value, (bool, int, float, str, tuple, list, dict)):
                continue
            try:
                settings[f"{name.rpartition('.')[2]}.{key}"] = json.loads(json.dumps(value))
            except (TypeError, ValueError):
                continue
    return settings


def read_manifest(directory: Path) -> Manifest:
    """Returns the validated manifest of the run in `directory`; UserError (one line) when it is missing,
    not JSON or not an agentqat manifest."""
    path = directory / MANIFEST_FILE
    if not path.is_file():
        raise UserError(f"{directory} is not a run directory (no {MANIFEST_FILE})", "pass runs/<name>")
    try:
        return Manifest.model_validate(read_json_object(path))
    except ValidationError as error:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or '(file)'}: {e['msg']}" for e in error.errors()[:3])
        raise UserError(f"{path} is not an agentqat run manifest: {problems}", "the run directory is damaged or foreign") from None


def windows_bos(arena: Arena) -> int | None:
    """Returns the token id the arena model's windows open with (None when they start with text)."""
    return bos_policy(arena.model).window_token


def check_windows(directory: Path, manifest: Manifest) -> Manifest:
    """Returns `manifest` when its windows open as the arena model's do today; UserError otherwise (a run recorded
    before the model's BOS token was put first, or the reverse, must not be extended with other windows)."""
    today = windows_bos(manifest.arena)
    if manifest.window_bos != today:
        def said(token: int | None) -> str:
            return "start with text" if token is None else f"open with token {token}"

        raise UserError(
            f"{directory} was recorded with windows that {said(manifest.window_bos)}; {manifest.arena.model}'s windows now {said(today)}",
            "start a new run (its figures are not comparable with this one's)",
        )
    return manifest


def write_manifest(directory: Path, manifest: Manifest) -> None:
    """Writes `manifest` to the run directory (atomically)."""
    write_json_atomic(directory / MANIFEST_FILE, manifest.model_dump(mode="json"))
