"""Generators of strategies and their variation operators. Importing this package registers every generator."""

from agentqat.generators import (  # noqa: F401  (registration)
    evopress,
    knapsack,
    llm,
    random,
    random_edits,
)
from agentqat.generators.base import (
    GENERATORS,
    Evaluated,
    Generator,
    GeneratorRecord,
    make_generator,
    register_generator,
    uses_seed,
)
from agentqat.generators.operators import CROSSOVERS, MUTATIONS, apply_random_operator

__all__ = [
    "CROSSOVERS",
    "GENERATORS",
    "MUTATIONS",
    "Evaluated",
    "Generator",
    "GeneratorRecord",
    "apply_random_operator",
    "make_generator",
    "register_generator",
    "uses_seed",
]
