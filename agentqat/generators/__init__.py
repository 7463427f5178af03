"""Generators of strategies and their variation operators. Importing this package registers every generator."""

from agentqat.generators import (  # noqa: F401  (registration)
    evo,
    knapsack,
    llm,  # noqa: F401  (registration)
    random,
    random_edits,
)
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
