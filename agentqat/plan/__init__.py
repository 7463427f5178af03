"""A plan before a run (issue 25, part 5): a worker's peak memory, the level database's size on disk and the time
of each step, for a model built on the meta device (no weights), from rates measured by bench/rates.py."""

from agentqat.plan.inputs import Device, parse_device, parse_memory
from agentqat.plan.plan import Fit, Plan, make_plan, plan_document
from agentqat.plan.rates import Rates, load_rates
from agentqat.plan.shape import ModelShape, load_shape, shape_of
from agentqat.plan.text import render_plan

__all__ = [
    "Device",
    "Fit",
    "ModelShape",
    "Plan",
    "Rates",
    "load_rates",
    "load_shape",
    "make_plan",
    "parse_device",
    "parse_memory",
    "plan_document",
    "render_plan",
    "shape_of",
]
