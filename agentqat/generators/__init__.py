"""Generators of strategies and their variation operators. Importing this package registers every generator."""

from agentqat.generators import evo, knapsack, random, random_edits  # noqa: F401  (registration)
from agentqat.generators import llm  # noqa: F401  (registration)
from agentqat.generators.base import (
    GENERATORS,
    Evaluated,
    GeneChoices,
    Generator,
    GeneratorRecord,
    SearchSpace,
    make_generator,
    register_generator,
    uses_seed,
)
from agentqat.generators.operators import CROSSOVERS, MUTATIONS, apply_random_operator
from agentqat.generators.repair import repair

__all__ = [
    "CROSSOVERS",
    "GENERATORS",
    "MUTATIONS",
    "Evaluated",
    "GeneChoices",
    "Generator",
    "GeneratorRecord",
    "SearchSpace",
    "apply_random_operator",
    "make_generator",
    "register_generator",
    "repair",
    "uses_seed",
]
