"""Run directories read and written by jobs: the journal of an evolve run, and any run read back for `show`.

runs/<name>/manifest.json       what the run is: job, arena, settings, seeds, versions, schema versions
runs/<name>/strategies.jsonl    every proposal as it is made: generation, index, generator, strategy id and
                                document (evolve runs; a generation cut by a kill is proposed again)
runs/<name>/results.jsonl       every match result, failures included (agentqat.arena.recorded)
runs/<name>/generations.jsonl   one summary per finished generation (evolve runs)
runs/<name>/<stream>.jsonl      what the generator noted, e.g. rejections and reflections of the LLM generator,
                                each with its generation (written when the generation is in)
runs/<name>/summary.json        the final leaderboard and why the run stopped, rewritten at each end
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from agentqat.arena.recorded import RESULTS_STREAM
from agentqat.arena.result import MatchResult
from agentqat.generators.base import GeneratorRecord
from agentqat.scoring import Ranked
from agentqat.store import RunStore, write_json_atomic
from agentqat.strategy import strategy_id

STRATEGIES_STREAM = "strategies"
GENERATIONS_STREAM = "generations"
SUMMARY_FILE = "summary.json"


class EvolveJournal:
    """The journal (agentqat.evolve.Journal) of an evolve run, kept in its run directory."""

    def __init__(self, store: RunStore):
        self.store = store
        self._proposals: dict[int, dict[int, dict]] = {}
        for record in store.read(STRATEGIES_STREAM):  # a generation proposed again after a kill: the last wins
            self._proposals.setdefault(record["generation"], {})[record["index"]] = record["document"]
        generations = store.read(GENERATIONS_STREAM)
        self._finished = {record["generation"] for record in generations}
        self._noted: dict[int, list[GeneratorRecord]] = {}  # what the generator noted, by generation
        own = {STRATEGIES_STREAM, GENERATIONS_STREAM, RESULTS_STREAM}
        for stream in sorted(path.stem for path in store.directory.glob("*.jsonl") if path.stem not in own):
            for record in store.read(stream):
                data = {key: value for key, value in record.items() if key != "generation"}
                self._noted.setdefault(record.get("generation"), []).append(GeneratorRecord(stream, data))
        self.elapsed_before = max((record["elapsed_s"] for record in generations), default=0.0)

    def proposals(self, generation: int) -> list[dict] | None:
        """Returns the proposals of a generation that finished in an earlier session, in order, else None."""
        if generation not in self._finished:
            return None
        recorded = self._proposals.get(generation, {})
        return [recorded[index] for index in sorted(recorded)]

    def record_proposal(self, generation: int, index: int, generator: str, document: dict) -> None:
        """Appends one proposal."""
        self.store.append(STRATEGIES_STREAM, {
            "generation": generation, "index": index, "generator": generator,
            "strategy_id": strategy_id(document), "document": document,
        })  # fmt: skip

    def record_generation(self, summary) -> None:
        """Appends a finished generation's summary, unless a resumed run replayed one already recorded."""
        if summary.generation not in self._finished:
            self.store.append(GENERATIONS_STREAM, asdict(summary))
            self._finished.add(summary.generation)

    def record_generator(self, generation: int, records: Sequence[GeneratorRecord]) -> None:
        """Appends what the generator noted in a generation to its streams."""
        for record in records:
            self.store.append(record.stream, {"generation": generation, **record.data})

    def generator_records(self, generation: int) -> list[GeneratorRecord]:
        """Returns what the generator noted in a generation of an earlier session, from every stream that is not
        the loop's own."""
        return list(self._noted.get(generation, []))

    def record_end(self, outcome) -> None:
        """Writes summary.json: why the run stopped, its totals and the final leaderboard."""
        write_json_atomic(self.store.directory / SUMMARY_FILE, {
            "stop_reason": outcome.stop_reason,
            "generations": len(outcome.generations),
            "matches": outcome.matches,
            "population": [strategy_id(member.document) for member in outcome.population],
            "leaderboard": [row_dict(row) for row in outcome.rows],
        })  # fmt: skip


def row_dict(row: Ranked) -> dict:
    """Returns a leaderboard row as a JSON-ready dict (an infinite score as None)."""
    data = asdict(row)
    data["score"] = None if row.score == float("-inf") else row.score
    return data


@dataclass(frozen=True)
class RunView:
    """A run read back: its manifest, every stage's leaderboard, its generations and documents."""

    directory: Path
    manifest: dict
    stages: dict[str, list[Ranked]]  # in the arena's stage order, stages without results left out
    generations: list[dict]
    documents: dict[str, dict]  # strategy id -> document, for evolve runs
    summary: dict | None


def read_run(directory: Path) -> RunView:
    """Returns the run in `directory` with each stage's leaderboard recomputed from its recorded results."""
    import json

    from agentqat.arena.config import Arena
    from agentqat.arena.tournament import rank_stage

    store = RunStore.open(directory)
    manifest = store.manifest
    arena = Arena.model_validate(manifest["arena"])
    results = [MatchResult.from_dict(record) for record in store.read(RESULTS_STREAM)]
    stages = {}
    for stage in arena.stages:
        played = [r for r in results if r.stage == stage.name]
        if played:
            stages[stage.name] = rank_stage(arena, played)
    documents = {record["strategy_id"]: record["document"] for record in store.read(STRATEGIES_STREAM)}
    summary_path = directory / SUMMARY_FILE
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else None
    return RunView(directory, manifest, stages, store.read(GENERATIONS_STREAM), documents, summary)
