"""Per-layer sensitivity measured in the arena: one probe match per decoder layer, with that layer alone
quantized to PROBE_BITS (RTN, asymmetric, the finest group of 64 or more that divides every width, else per
channel) and everything else left at 16 bits. A layer's sensitivity is the probe's KL to the base model on the
arena's first stage; a failed probe (e.g. a collapse) counts twice the largest measured KL. The LLM
generator's prompts carry them.
"""

from __future__ import annotations

from collections.abc import Sequence

from agentqat.arena.config import Arena
from agentqat.arena.request import MatchRequest
from agentqat.arena.result import MatchResult
from agentqat.arena.tournament import Player
from agentqat.models import ModelFacts
from agentqat.strategy import SCHEMA_VERSION, strategy_id

PROBE_BITS = 3
PROBE_GROUPS = (64, 96, 128, 192, 256)


def probe_documents(facts: ModelFacts) -> dict[int, dict]:
    """Returns, per decoder layer, the strategy quantizing only that layer (see the module docstring)."""
    widths = {info.in_features for info in facts.linears}
    group = next((g for g in PROBE_GROUPS if all(width % g == 0 for width in widths)), 0)
    weight = {"bits": PROBE_BITS, "group_size": group, "symmetric": False, "rounding": "rtn"}
    return {
        layer: {
            "schema_version": SCHEMA_VERSION,
            "name": f"probe-layer{layer}-w{PROBE_BITS}",
            "default": {"weight": {"bits": 16}},
            "rules": [{"layers": str(layer), "modules": ["all"], "weight": weight}],
        }
        for layer in range(facts.num_layers)
    }


def sensitivities(probes: dict[int, dict], results: Sequence[MatchResult]) -> dict[int, float]:
    """Returns each layer's KL to the base model under its probe (a failed probe: twice the largest KL)."""
    quality = {result.strategy_id: result.quality for result in results}
    measured = {layer: quality[strategy_id(document)] for layer, document in probes.items()}
    worst = 2 * max((q.kl for q in measured.values() if q is not None), default=1.0)
    return {layer: worst if q is None else q.kl for layer, q in measured.items()}


def measure(play: Player, arena: Arena, facts: ModelFacts) -> tuple[dict[int, float], int]:
    """Returns the sensitivities measured by playing the probes on the arena's first stage, and the number of
    probe matches (a recorded player answers probes played before from the run)."""
    probes = probe_documents(facts)
    results = play([MatchRequest(document, arena.stages[0].name, arena.seed) for document in probes.values()])
    return sensitivities(probes, results), len(results)
