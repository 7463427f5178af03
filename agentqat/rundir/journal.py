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

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from agentqat.arena.result import MatchResult
from agentqat.arena.scoring import Ranked
from agentqat.arena.tournament import rank_stage
from agentqat.errors import UserError
from agentqat.evolution.loop import GenerationSummary
from agentqat.generators.base import GeneratorRecord
from agentqat.rundir.manifest import read_manifest
from agentqat.rundir.paths import GENERATIONS_STREAM, RESULTS_STREAM, STRATEGIES_STREAM, SUMMARY_FILE
from agentqat.rundir.store import RunStore, read_json_object, write_json_atomic
from agentqat.strategy.document import strategy_id


def parsed(store: RunStore, stream: str, parse: Callable[[dict], object]) -> list:
    """Returns every record of a stream through `parse`; UserError naming the record that `parse` refuses (a
    foreign or damaged line)."""
    out = []
    for number, record in enumerate(store.read(stream), 1):
        try:
            out.append(parse(record))
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            raise UserError(
                f"{store.directory / stream}.jsonl record {number} is not a {stream} record ({type(error).__name__}: {error})",
                "the run directory is damaged or foreign",
            ) from None
    return out


def _generation_of(record: dict) -> int:
    """Returns a record's generation, a non-negative int (ValueError otherwise)."""
    generation = record["generation"]
    if not isinstance(generation, int) or isinstance(generation, bool) or generation < 0:
        raise ValueError(f"generation {generation!r} is not a non-negative integer")
    return generation


def _proposal(record: dict) -> tuple[int, int, dict]:
    """Returns a strategies record as (generation, index, document)."""
    index, document = record["index"], record["document"]
    if not isinstance(index, int) or not isinstance(document, dict):
        raise ValueError("index must be an integer and document an object")
    return _generation_of(record), index, document


def _generation_record(record: dict) -> dict:
    """Returns a generations record once it has the fields of a GenerationSummary (those added with a default
    since may be missing: earlier runs did not write them) and a number for `elapsed_s`."""
    from dataclasses import MISSING


    known = {field.name for field in fields(GenerationSummary)}
    required = {field.name for field in fields(GenerationSummary) if field.default is MISSING and field.default_factory is MISSING}
    if not required <= set(record) <= known:
        raise ValueError(f"fields {sorted((required - set(record)) | (set(record) - known))} differ from a generation summary's")
    _generation_of(record)
    if not isinstance(record["elapsed_s"], (int, float)):
        raise ValueError("elapsed_s is not a number")
    return record


def _noted(stream: str) -> Callable[[dict], tuple[int | None, GeneratorRecord]]:
    def parse(record: dict) -> tuple[int | None, GeneratorRecord]:
        generation = _generation_of(record) if "generation" in record else None
        return generation, GeneratorRecord(stream, {key: value for key, value in record.items() if key != "generation"})

    return parse


def read_results(store: RunStore) -> list[MatchResult]:
    """Returns the run's recorded match results (UserError on a foreign record)."""
    return parsed(store, RESULTS_STREAM, MatchResult.from_dict)


class EvolveJournal:
    """The journal (agentqat.evolution.loop.Journal) of an evolve run, kept in its run directory."""

    def __init__(self, store: RunStore):
        self.store = store
        self._proposals: dict[int, dict[int, dict]] = {}
        for generation, index, document in parsed(store, STRATEGIES_STREAM, _proposal):
            self._proposals.setdefault(generation, {})[index] = document  # proposed again after a kill: last wins
        generations = parsed(store, GENERATIONS_STREAM, _generation_record)
        self._finished = {record["generation"] for record in generations}
        self._noted: dict[int | None, list[GeneratorRecord]] = {}  # what the generator noted, by generation
        own = {STRATEGIES_STREAM, GENERATIONS_STREAM, RESULTS_STREAM}
        for stream in sorted(path.stem for path in store.directory.glob("*.jsonl") if path.stem not in own):
            for generation, record in parsed(store, stream, _noted(stream)):
                self._noted.setdefault(generation, []).append(record)
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
            "stop_rule": outcome.stop_rule,
            "generations": len(outcome.generations),
            "matches": outcome.matches,
            "tokens": outcome.tokens,
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
    """Returns the run in `directory` with each stage's leaderboard recomputed from its recorded results;
    UserError (one line) when the directory is not a run or holds damaged or foreign records."""
    store = RunStore.open(directory)
    manifest = read_manifest(directory)
    arena = manifest.arena
    results = read_results(store)
    stages = {}
    for stage in arena.stages:
        played = [r for r in results if r.stage == stage.name]
        if played:
            stages[stage.name] = rank_stage(arena, played)
    documents = {strategy_id(document): document for _, _, document in parsed(store, STRATEGIES_STREAM, _proposal)}
    generations = parsed(store, GENERATIONS_STREAM, _generation_record)
    return RunView(directory, manifest.model_dump(mode="json"), stages, generations, documents, read_summary(directory))


def read_summary(directory: Path) -> dict | None:
    """Returns the run's summary.json (written when it ended), None when it has none; UserError when damaged."""
    path = directory / SUMMARY_FILE
    if not path.exists():
        return None
    summary = read_json_object(path)
    if not isinstance(summary.get("stop_reason"), str) or not isinstance(summary.get("generations"), int):
        raise UserError(f"{path} is not a run summary", "the run directory is damaged or foreign")
    return summary
