"""Picks the strategy to export from a recorded run: the best survivor of its arena's last stage."""

from __future__ import annotations

from pathlib import Path

from agentqat.arena.config import Arena
from agentqat.arena.scoring import aggregate
from agentqat.errors import UserError
from agentqat.rundir.journal import read_results, read_run
from agentqat.rundir.manifest import read_manifest
from agentqat.rundir.paths import RESULTS_FILE
from agentqat.rundir.store import RunStore
from agentqat.study.unseen import TEST_STAGE


def best_of_run(directory: Path, max_bits: float | None = None) -> tuple[dict, Arena, dict]:
    """Returns (document, arena, figures) of the run's best-ranked survivor on its arena's last stage (within
    `max_bits` effective bits when given); figures are that stage's aggregate. UserError when there is none."""
    view = read_run(Path(directory))
    arena = read_manifest(Path(directory)).arena
    last = arena.stages[-1].name
    rows = [row for row in view.stages.get(last, []) if row.survives]
    if max_bits is not None:
        rows = [row for row in rows if row.aggregate.bits_per_weight is not None and row.aggregate.bits_per_weight <= max_bits]
    if not rows:
        within = f" within {max_bits:g} bits" if max_bits is not None else ""
        raise UserError(f"run {directory} has no survivor of its last stage {last!r}{within}", "pick another run, raise --max-bits or pass --strategy")
    best = min(rows, key=lambda row: row.rank)
    document = view.documents.get(best.strategy_id)
    if document is None:
        raise UserError(f"run {directory} does not record the document of strategy {best.strategy_id}", "pass the strategy with --strategy")
    return document, arena, best.aggregate.to_dict()


def polished_of(directory: Path) -> tuple[dict, str, dict]:
    """Returns (document, arena name, figures) of a polish directory (agentqat polish): the strategy it polished,
    the arena it was played on, and the polished strategy's aggregate on that arena's stage. UserError when the
    directory holds no polish."""
    import json


    record = Path(directory) / "polish.json"
    if not record.is_file() or not (Path(directory) / RESULTS_FILE).is_file():
        raise UserError(f"{directory} holds no polish (polish.json, results.jsonl)", "pass a directory agentqat polish wrote")
    polish = json.loads(record.read_text())
    played = read_results(RunStore(Path(directory)))
    polished = [r for r in played if r.strategy_id.endswith("-polished") and r.stage.split(":")[0] != TEST_STAGE]  # the arena's
    return polish["strategy"], polish["arena"], aggregate(polished).to_dict() if polished else {}
