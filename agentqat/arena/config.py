"""Arena definitions: TOML files (packaged ones in the top-level arena/, which the wheel carries as agentqat/arena/definitions/)
that name the model, data, stages, budget and score weights."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_serializer, model_validator

from agentqat import defaults, edited_files
from agentqat.errors import UserError
from agentqat.strategy.document import WeightGene

ARENA_DEFINITIONS = edited_files("arena", "agentqat.arena", "definitions")
DEFAULT_ARENA = "smollm2-default"
MAX_FILE_BYTES = 64 * 1024  # the packaged arenas are under 2 KB
MAX_MESSAGE = 300  # characters of a parser's message kept in an error line


def _printable(text: str) -> str:
    if not text.isprintable():
        raise ValueError("must be printable text (no control characters such as NUL or a newline)")
    return text


def _whole_above_one(gpus: float) -> float:
    if gpus > 1 and not gpus.is_integer():
        raise ValueError("above 1 must be a whole number of GPUs (Ray shares a fraction of one GPU only)")
    return gpus


# A name, model or corpus: printable (no NUL that a path would choke on, no newline in an error line), bounded.
Text = Annotated[str, Field(min_length=1, max_length=512), AfterValidator(_printable)]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Stage(_Frozen):
    """One round of evaluation: how many tokens, on how many disjoint window sets, and who moves on."""

    name: Text
    windows: int = Field(ge=1, le=256, description="evaluation windows per window set")
    window_sets: int = Field(1, ge=1, le=8, description="disjoint, seeded window sets (>= 3 for confidence intervals)")
    promote: float = Field(0.5, gt=0, le=1, description="share of this stage's survivors evaluated on the next stage")
    cloze: bool = False
    qa: bool = False


class ScoreWeights(_Frozen):
    """Weights of the composite survival score (see agentqat.arena.scoring for the formula)."""

    kl: float = 1.0
    perplexity: float = 0.5
    bits: float = 0.5
    latency: float = 0.0  # engine decode latency (vllm-* deploy targets with measured engine costs)
    memory: float = 0.0  # engine peak memory (the same)
    cloze: float = 0.5
    qa: float = 0.5


class Levels(_Frozen):
    """The level ladder (agentqat/levels): weight genes every module is quantized at once, stored on disk, and
    what searches over it use. A level writes only the fields that differ from the base default's weight."""

    ladder: tuple[WeightGene, ...] = Field(min_length=2, max_length=32, description="weight genes, one per level")
    offspring: int = Field(32, ge=1, le=1024, description="proposals per generation of `evolve` (EvoPress's lambda)")
    offspring: int = Field(32, ge=1, le=1024, description="proposals per generation (EvoPress's lambda)")

    @model_validator(mode="after")
    def _distinct_levels(self) -> Levels:
        if len(set(self.ladder)) != len(self.ladder):
            raise ValueError("ladder levels must be distinct")
        return self


EMBEDDING_TYPES = ("F32", "F16", "Q8_0", "Q5_1", "Q5_0", "Q4_1", "Q4_0", "IQ4_NL")  # block-32 types fit any width
HEAD_GPTQ_TYPES = ("Q8_0", "Q5_0", "Q4_0", "IQ4_NL")  # the embedding types GPTQ works inside (agentqat.quant.ggml_gptq)


class Engine(_Frozen):
    """llama.cpp as the arena's engine: its ladder's GGUF levels (rounding imatrix) are made by llama-quantize with an
    importance matrix from the calibration split, and every match plays the token embedding (and an untied output
    head) at `embedding`, as the GGUF file holds them: rounded by llama-quantize with the importance matrix, or
    (`embedding_rounding = "gptq"`) the output head, tied or not, by GPTQ inside the type against the head's input
    (`agentqat.levels.head`). `file_bytes` is the budget as users compare it: the whole file's size, which
    `bits_budget` (the linear weights' share) must keep within (checked when the arena runs)."""

    embedding: Literal[EMBEDDING_TYPES] = Field("Q8_0", description="GGML type of token_embd (and an untied output)")
    embedding_rounding: Literal["imatrix", "gptq"] = Field("imatrix", description="who rounds the output head in its type")
    file_bytes: int | None = Field(None, gt=0, description="the GGUF file size survivors stay within")

    @model_serializer(mode="wrap")
    def _default_unrecorded(self, handler) -> dict:
        """Leaves embedding_rounding out of dumps while it is imatrix: the dumps and hashes of engine arenas (run
        manifests, cache keys) are the ones they were before the field existed."""
        data = handler(self)
        if self.embedding_rounding == "imatrix":
            data.pop("embedding_rounding", None)
        return data

    @model_validator(mode="after")
    def _gptq_type(self) -> Engine:
        if self.embedding_rounding == "gptq" and self.embedding not in HEAD_GPTQ_TYPES:
            raise ValueError(f"embedding_rounding gptq works inside {', '.join(HEAD_GPTQ_TYPES)}, not {self.embedding}; set embedding to one of them")
        return self


class Arena(_Frozen):
    """A complete arena: everything a match needs besides the strategy and the seed."""

    name: Text
    model: Text = defaults.DEFAULT_MODEL
    corpus: Text = defaults.DEFAULT_CORPUS
    seed: int = Field(defaults.SEED, ge=0, lt=2**63)
    window_tokens: int = Field(defaults.WINDOW_TOKENS, ge=16, le=4096)
    calibration_windows: int = Field(defaults.CALIBRATION_WINDOWS, ge=1, le=512)
    bits_budget: float = Field(4.5, gt=1, le=16, description="effective bits per weight a survivor may use")
    collapse_ratio: float = Field(10.0, gt=1, description="perplexity above this multiple of the base is collapse")
    match_seconds: float = Field(600.0, gt=0, description="a match running longer is recorded as a timeout")
    compute_threads: int = Field(1, ge=1, le=64, description="torch threads per evaluator actor")
    gpus_per_worker: Annotated[float, AfterValidator(_whole_above_one)] = Field(
        defaults.GPUS_PER_WORKER, ge=0, le=64, description="GPUs each Ray evaluator actor asks for: a fraction shares one, above 1 whole GPUs"
    )
    device: str = Field(defaults.DEVICE, pattern=defaults.DEVICE_PATTERN, description="where each worker computes: cpu, cuda, cuda:N or auto")
    sequential: bool = Field(defaults.SEQUENTIAL, description="run the model layer by layer (models bigger than the device)")
    stages: tuple[Stage, ...] = Field(min_length=1)
    score: ScoreWeights = ScoreWeights()
    levels: Levels | None = Field(None, description="a level ladder: the level database and module-level search")
    deploy: Literal[defaults.DEPLOY_TARGETS] = Field(defaults.DEPLOY, description="the engine survivors must run on (agentqat.strategy.deploy)")
    engine: Engine | None = Field(None, description="llama.cpp makes the ladder's GGUF levels and the embedding (deploy gguf)")
    source: str = ""

    @model_validator(mode="after")
    def _unique_stage_names(self) -> Arena:
        names = [stage.name for stage in self.stages]
        if len(set(names)) != len(names):
            raise ValueError(f"stage names must be unique, got {names}")
        return self

    @model_validator(mode="after")
    def _sequential_without_tasks(self) -> Arena:
        if self.sequential and any(stage.cloze or stage.qa for stage in self.stages):
            raise ValueError("a sequential (layer-by-layer) arena scores KL and perplexity only: drop the stages' cloze and qa")
        return self

    @model_validator(mode="after")
    def _engine_deploys_gguf(self) -> Arena:
        if self.engine is not None and self.deploy != "gguf":
            raise ValueError(f"an [engine] arena's survivors are GGUF files: set deploy = \"gguf\", not {self.deploy!r}")
        return self

    @model_serializer(mode="wrap")
    def _defaults_unrecorded(self, handler) -> dict:
        """Leaves gpus_per_worker out of dumps while it is 0, device while it is cpu, sequential while false, and
        engine while there is none, so that the dumps and hashes of CPU arenas without an engine (run manifests,
        sensitivity cache keys) are the ones they were before those fields existed."""
        data = handler(self)
        for name in ("gpus_per_worker", "device", "sequential"):
            if getattr(self, name) == getattr(defaults, name.upper()):
                data.pop(name, None)
        if self.engine is None:
            data.pop("engine", None)
        return data

    def stage(self, name: str) -> Stage:
        """Returns the stage called `name`."""
        for stage in self.stages:
            if stage.name == name:
                return stage
        raise UserError(f"arena {self.name} has no stage '{name}'", f"use one of {[s.name for s in self.stages]}")

    def on_model(self, model: str, keep_levels: bool = False) -> Arena:
        """Returns this arena played on `model`, with no file budget unless `model` is this arena's own (the budget is
        its file's size), and its levels quantized on the fly, or (`keep_levels`, which levels made by llama-quantize
        need) its ladder built into a level database of `model`'s own."""
        engine = self.engine
        if engine is not None and model != self.model:
            engine = engine.model_copy(update={"file_bytes": None})
        return self.model_copy(update={"model": model, "levels": self.levels if keep_levels else None, "engine": engine})


def packaged_arenas() -> list[str]:
    """Returns the names of the arenas packaged with agentqat."""
    return sorted(p.name.removesuffix(".toml") for p in ARENA_DEFINITIONS.iterdir() if p.name.endswith(".toml"))


def load_arena(spec: str = DEFAULT_ARENA) -> Arena:
    """Returns the arena in a TOML file, or the packaged arena called `spec` (arena/<spec>.toml)."""
    path = Path(spec)
    if not path.suffix:
        path = ARENA_DEFINITIONS / f"{spec}.toml"
    try:
        size = path.stat().st_size if path.is_file() else None
    except (OSError, ValueError):  # a name too long, a NUL byte
        size = None
    if size is None:
        raise UserError(f"arena {spec[:200]!r} does not exist", f"pass a TOML file or one of {packaged_arenas()}")
    if size > MAX_FILE_BYTES:
        raise UserError(f"arena file {path} is {size:,} bytes; arenas are at most {MAX_FILE_BYTES:,}", "pass an arena TOML file")
    document = _parsed(path)
    document.setdefault("name", path.stem)
    try:
        return Arena.model_validate({**document, "source": str(path)})
    except ValidationError as error:
        lines = [
            f"{'.'.join(str(p) for p in e['loc']) or '(file)'}: {e['msg'][:MAX_MESSAGE]}" + (" (unknown key)" if e["type"] == "extra_forbidden" else "")
            for e in error.errors()
        ]
        raise UserError(f"arena file {path} is invalid: " + "; ".join(lines), "see arena/README.md for the fields") from None


def _parsed(path: Path) -> dict:
    """Returns the TOML document in the file at `path`; raises UserError with one line when it is not one."""
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise UserError(f"arena file {path} is not UTF-8 text", "save it as UTF-8") from None
    except RecursionError:  # tomllib recurses once per level of nested arrays and tables
        raise UserError(f"arena file {path} nests arrays or tables too deep to read", "an arena nests two levels") from None
    except tomllib.TOMLDecodeError as error:
        message = " ".join(str(error).split())[:MAX_MESSAGE]
        raise UserError(f"arena file {path} is not valid TOML: {message}", "fix the syntax") from None
