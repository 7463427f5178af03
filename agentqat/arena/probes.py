"""Per-layer sensitivity measured in the arena: one probe match per decoder layer, with that layer alone
quantized to PROBE_BITS (RTN, asymmetric, the finest group of 64 or more that divides every width, else per
channel) and everything else left at 16 bits. A layer's sensitivity is the probe's KL to the base model on the
arena's first stage; a failed probe (e.g. a collapse) counts twice the largest measured KL. The LLM
generator's prompts carry them.

Measured once per arena (its seed included) and shared: `shared_sensitivities` keeps them in the cache directory
(`sensitivities/<arena key>.json`, with what measuring them cost), so every run and every arm of a comparison
reads the same values, and a comparison charges their cost once, as preparation, apart from each run's budget.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from agentqat.arena.config import Arena
from agentqat.arena.request import MatchRequest
from agentqat.arena.result import MatchResult
from agentqat.arena.tournament import Player
from agentqat.models import ModelFacts, bos_policy
from agentqat.progress import Reporter, phase
from agentqat.rundir.store import read_json_object, write_json_atomic
from agentqat.strategy.document import SCHEMA_VERSION, strategy_id

CACHE_FOLDER = "sensitivities"

PROBE_BITS = 3
PROBE_GROUPS = (64, 96, 128, 192, 256)


def probe_weight(facts: ModelFacts, bits: int = PROBE_BITS) -> dict:
    """Returns the weight gene of a probe at `bits`: RTN, asymmetric, the finest group of PROBE_GROUPS dividing
    every input width (else per channel)."""
    widths = {info.in_features for info in facts.linears}
    group = next((g for g in PROBE_GROUPS if all(width % g == 0 for width in widths)), 0)
    return {"bits": bits, "group_size": group, "symmetric": False, "rounding": "rtn"}


def probe_documents(facts: ModelFacts) -> dict[int, dict]:
    """Returns, per decoder layer, the strategy quantizing only that layer (see the module docstring)."""
    weight = probe_weight(facts)
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


def measure(
    play: Player, arena: Arena, facts: ModelFacts, reporter: Reporter | None = None
) -> tuple[dict[int, float], int]:
    """Returns the sensitivities measured by playing the probes on the arena's first stage, and the number of
    probe matches (a recorded player answers probes played before from the run).

    Reported as the phase "sensitivity probes", one step per probe the player takes up (a pool takes the next
    one when a worker is free)."""
    probes = probe_documents(facts)
    detail = f"one match per layer, that layer alone at {PROBE_BITS} bits"
    results = play_probes(play, arena, list(probes.values()), "sensitivity probes", detail, reporter)
    return sensitivities(probes, results), len(results)


def play_probes(
    play: Player, arena: Arena, documents: Sequence[dict], title: str, detail: str, reporter: Reporter | None = None
) -> list[MatchResult]:
    """Returns the results of playing `documents` on the arena's first stage, reported as the phase `title`
    with one step per probe the player takes up."""
    requests = [MatchRequest(document, arena.stages[0].name, arena.seed) for document in documents]
    with phase(reporter, title, total=len(requests), detail=detail) as step:
        return play(_stepped(requests, step))


def _stepped(requests: Sequence[MatchRequest], step: Callable[[int], None]) -> Iterator[MatchRequest]:
    """Yields `requests`, advancing `step` by one for each when the player asks for the next."""
    for request in requests:
        yield request
        step(1)


@dataclass(frozen=True)
class Sensitivities:
    """Per-layer sensitivities and what measuring them cost (matches, evaluated tokens); `cached`: read back."""

    values: dict[int, float]
    matches: int
    tokens: int
    cached: bool = False


def arena_key(arena: Arena) -> str:
    """Returns a hash of everything in the arena that a probe's result depends on: its source path and its
    torch thread count (a machine setting, e.g. `--threads`) left out, and the BOS token its model's windows open
    with where they open with one (so results on windows with and without it never share a key; a model whose
    windows start with text keeps the key it always had)."""
    fields = arena.model_dump(mode="json", exclude={"source", "compute_threads"})
    if (bos := bos_policy(arena.model).window_token) is not None:
        fields["window_bos"] = bos
    text = json.dumps(fields, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def cache_file(arena: Arena, cache: Path) -> Path:
    """Returns the file in `cache` (a folder) that keeps the arena's sensitivities."""
    return Path(cache) / CACHE_FOLDER / f"{arena_key(arena)}.json"


def shared_sensitivities(
    play: Player, arena: Arena, facts: ModelFacts, cache: Path, reporter: Reporter | None = None
) -> Sensitivities:
    """Returns the arena's sensitivities from `cache` (a folder), measuring them with `play` and storing them
    there first when absent (see the module docstring)."""
    path = cache_file(arena, cache)
    if path.is_file():
        data = read_json_object(path)
        values = {int(layer): float(kl) for layer, kl in data["values"].items()}
        return Sensitivities(values, int(data["matches"]), int(data["tokens"]), cached=True)
    values, matches = measure(play, arena, facts, reporter)
    measured = Sensitivities(values, matches, matches * arena.stages[0].windows * arena.window_tokens)
    write_json_atomic(path, {**asdict(measured), "arena": arena.name, "cached": False})
    return measured
