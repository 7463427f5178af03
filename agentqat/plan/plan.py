"""A plan before a run: a worker's peak memory, the level database on disk and the time of each step, for a
model's shape on an arena and a device, and whether the worker fits the memory it is given."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from agentqat.arena.config import Arena
from agentqat.levels import arena_ladder
from agentqat.plan.inputs import Device
from agentqat.plan.memory import WorkerMemory, layer_memory, whole_model_memory
from agentqat.plan.rates import Rates, cuda_rates
from agentqat.plan.shape import ModelShape
from agentqat.plan.storage import DatabaseSize, database_size
from agentqat.plan.timing import Estimate, estimates

COMPUTE_DTYPES = {"cpu": ("fp32", 4), "cuda": ("bf16", 2)}  # the CPU path computes in float32 today


@dataclass(frozen=True)
class Fit:
    """Whether a worker fits the memory it is given, on either path, and what to do."""

    memory: str  # what the memory is: "--gpu-memory 16GiB", "this machine's memory"
    available_bytes: int
    whole_model: bool
    layer_by_layer: bool
    message: str


@dataclass(frozen=True)
class Plan:
    """Everything `agentqat plan` prints."""

    model: str
    architecture: str
    parameters: int
    layers: int
    linear_modules: int
    linear_weights: int
    arena: str
    device: str
    compute_dtype: str
    workers: int
    memory: WorkerMemory
    sequential: WorkerMemory
    fit: Fit | None
    database: DatabaseSize
    rates: str
    estimates: tuple[Estimate, ...]


def fit_of(memory: WorkerMemory, sequential: WorkerMemory, available: int, what: str, label: str) -> Fit:
    """Returns whether a worker fits `available` bytes, whole model or layer by layer, with its message."""
    gib = f"{available / 2**30:,.1f} GiB"
    if memory.total <= available:
        message = f"fits {what} ({gib}) with the whole model on the device"
    elif sequential.total <= available:
        message = (f"does NOT fit {what} ({gib}): the whole model needs {memory.total / 2**30:,.1f} GiB; the sequential "
                   f"(layer-by-layer) path is needed ({sequential.total / 2**30:,.1f} GiB)")  # fmt: skip
    else:
        message = (f"does NOT fit {what} ({gib}) even layer by layer ({sequential.total / 2**30:,.1f} GiB): use a device "
                   "with more memory or an arena with fewer and shorter windows")  # fmt: skip
    return Fit(label, available, memory.total <= available, sequential.total <= available, message)


def make_plan(
    shape: ModelShape, arena: Arena, device: Device, rates: Rates, matches: int, workers: int,
    gpu_memory: int | None = None, host_memory: int | None = None,
) -> Plan:  # fmt: skip
    """Returns the plan of `shape` on `arena` and `device`: memory checked against `gpu_memory` on CUDA (when
    given) or `host_memory` on the CPU (when given); times from `rates` (on CUDA scaled by the labelled assumption)."""
    dtype, dtype_bytes = COMPUTE_DTYPES[device.kind]
    memory = whole_model_memory(shape, arena, dtype_bytes)
    sequential = layer_memory(shape, arena, dtype_bytes)
    fit = None
    if device.is_cuda and gpu_memory is not None:
        fit = fit_of(memory, sequential, gpu_memory, "the GPU memory given", f"--gpu-memory {gpu_memory / 2**30:g}GiB")
    elif not device.is_cuda and host_memory is not None:
        fit = fit_of(memory, sequential, host_memory, "this machine's memory", "this machine's memory")
    ladder = arena_ladder(arena.levels, shape.facts)
    device_rates = cuda_rates(rates) if device.is_cuda else rates
    facts = shape.facts
    return Plan(
        model=facts.name, architecture=facts.architecture, parameters=facts.num_parameters, layers=facts.num_layers,
        linear_modules=len(facts.linears), linear_weights=shape.linear_weights, arena=arena.name, device=str(device),
        compute_dtype=dtype, workers=workers, memory=memory, sequential=sequential, fit=fit,
        database=database_size(shape, ladder), rates=device_rates.source,
        estimates=estimates(shape, device_rates, arena, ladder, matches, workers),
    )  # fmt: skip


def plan_document(plan: Plan) -> dict:
    """Returns the plan as a JSON-ready dict, with the totals the dataclasses compute."""
    document = asdict(plan)
    for key in ("memory", "sequential"):
        document[key]["total"] = getattr(plan, key).total
    document["database"]["bytes"] = plan.database.bytes
    document["database"]["float32_bytes"] = plan.database.float32_bytes
    return document
