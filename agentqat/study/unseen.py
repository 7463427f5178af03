"""Final winners re-evaluated on text no search read: the test split of the arena's corpus, or a text file.

A re-evaluation is a match on the arena's own Workbench (same model, calibration and quality code) whose windows
come from the unseen text instead of the evaluation split: `UnseenBench` overrides only `windows`. Its stage is
named "test" (the corpus's test split) or "test:<file name>", so no record of it can pass for a search match.
Windows are seeded by the arena's seed, so every run's winners are scored on the same tokens (paired).

Records: DIR/test/results.jsonl, one MatchResult per (run, strategy, stage), with `extra` naming the run, its
generator and seed, the winner's rank in its run and its search aggregate on the run's last stage.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from agentqat import defaults
from agentqat.arena.config import Arena, Stage
from agentqat.arena.match import Workbench
from agentqat.arena.request import MatchRequest
from agentqat.arena.result import MatchResult
from agentqat.data import sample_windows, tokenize, unseen_text, window_count
from agentqat.errors import UserError
from agentqat.progress import Reporter, phase
from agentqat.rundir.journal import read_results, read_run
from agentqat.rundir.paths import MANIFEST_FILE, RUNS_DIR, TEST_DIR, WINNERS_DIR
from agentqat.rundir.store import RunStore, write_json_atomic

TEST_STAGE = "test"
HELDOUT_STAGE = "heldout"  # the corpus's held-out split: unseen by the search, where a choice after it is made (polish)
REEVALUATION_SECONDS = 7 * 24 * 3600.0  # a winner's re-evaluation is not a timed match in a tournament


def stage_name(source: str) -> str:
    """Returns the stage name of re-evaluations on `source`: "test", "heldout" (the corpus's held-out split), or
    "test:<file name>" for a text file."""
    return source if source in (TEST_STAGE, HELDOUT_STAGE) else f"{TEST_STAGE}:{Path(source).name}"


class UnseenBench(Workbench):
    """The arena's Workbench with one stage, `stage_name(source)`, whose windows come from unseen text."""

    def __init__(self, arena: Arena, source: str = TEST_STAGE, windows: int = defaults.TEST_WINDOWS, reporter: Reporter | None = None):
        super().__init__(arena, worker="test", reporter=reporter)
        self.unseen_ids = tokenize(self.loaded.tokenizer, unseen_text(source, arena.corpus))
        count = min(windows, window_count(len(self.unseen_ids), arena.window_tokens, self.loaded.bos.window_token))
        if count < 1:
            raise UserError(
                f"the unseen text {source!r} holds {len(self.unseen_ids)} tokens, less than one window of {arena.window_tokens}",
                "use a longer test corpus file",
            )
        self.stage = Stage(name=stage_name(source), windows=count)
        self.arena = arena.model_copy(update={"stages": (self.stage,), "match_seconds": REEVALUATION_SECONDS})

    def windows(self, stage: Stage, seed: int, window_set: int) -> torch.Tensor:
        """Returns the stage's windows of the unseen text (one window set)."""
        return sample_windows(
            self.unseen_ids, self.arena.window_tokens, stage.windows, seed, window_set * stage.windows, self.loaded.bos.window_token
        )


def test_scores(document: dict, arena: Arena, source: str = TEST_STAGE, bench: UnseenBench | None = None) -> MatchResult:
    """Returns the match result (perplexity, KL and top-1 against the base model) of the strategy `document` on
    the unseen text `source` ("test" or a text file), played on `bench` (made when not given)."""
    bench = bench or UnseenBench(arena, source)
    return bench.play(MatchRequest(document, bench.stage.name, bench.arena.seed))


test_scores.__test__ = False  # a library function, not a pytest test


@dataclass(frozen=True)
class Winner:
    """One final winner of an evolve run: the run, its rank there and its search aggregate (last stage)."""

    run: str
    generator: str
    seed: int
    rank: int
    strategy_id: str
    document: dict
    search: dict  # the scoring.Aggregate of its last stage, as a dict, plus "score"


def run_directories(directory: Path) -> list[Path]:
    """Returns the evolve run directories of a comparison (DIR/runs/*/ with a manifest), sorted by name."""
    runs = sorted(path for path in (Path(directory) / RUNS_DIR).glob("*/") if (path / MANIFEST_FILE).is_file())
    if not runs:
        raise UserError(f"{directory} holds no runs ({RUNS_DIR}/<generator>-seed<k>/)", "pass a comparison directory")
    return runs


def winners(directory: Path, top: int = defaults.TEST_TOP) -> list[Winner]:
    """Returns the `top` best survivors of the last stage of every run in the comparison `directory`."""
    found = []
    for path in run_directories(directory):
        view = read_run(path)
        if not view.stages:
            continue
        rows = list(view.stages.values())[-1]
        settings = view.manifest["settings"]
        for row in [row for row in rows if row.survives][:top]:
            found.append(Winner(
                run=path.name, generator=settings["generator"], seed=settings["seed"], rank=row.rank,
                strategy_id=row.strategy_id, document=view.documents[row.strategy_id],
                search={**row.aggregate.to_dict(), "score": row.score},
            ))  # fmt: skip
    return found


def write_winners(directory: Path) -> list[Path]:
    """Returns the strategy files written (or rewritten) to DIR/winners/<run>.json: each run's rank-1 winner, a
    document that `agentqat quantize --strategy` re-scores as it is."""
    folder = Path(directory) / WINNERS_DIR
    written = []
    for winner in winners(directory, top=1):
        path = folder / f"{winner.run}.json"
        write_json_atomic(path, winner.document)
        written.append(path)
    return written


def read_test_results(directory: Path) -> list[MatchResult]:
    """Returns the re-evaluations recorded in DIR/test/ (none when it does not exist)."""
    return read_results(RunStore(Path(directory) / TEST_DIR))


def reevaluate(
    directory: Path,
    sources: tuple[str, ...] = (TEST_STAGE,),
    top: int = defaults.TEST_TOP,
    windows: int = defaults.TEST_WINDOWS,
    reporter: Reporter | None = None,
) -> list[MatchResult]:
    """Returns every re-evaluation of the comparison's final winners on each unseen `source`, playing only those
    not recorded yet in DIR/test/results.jsonl (one Workbench per arena and source, the model loaded once)."""
    store = RunStore(Path(directory) / TEST_DIR)
    store.directory.mkdir(parents=True, exist_ok=True)
    done = {(r.extra["run"], r.strategy_id, r.stage) for r in read_test_results(directory)}
    arenas = {path.name: read_run(path).manifest["arena"] for path in run_directories(directory)}
    benches: dict[tuple[str, str], UnseenBench] = {}
    todo = [(w, s) for w in winners(directory, top) for s in sources if (w.run, w.strategy_id, stage_name(s)) not in done]
    with phase(reporter, "re-evaluating winners on unseen text", total=len(todo)) as step:
        for winner, source in todo:
            arena = Arena.model_validate(arenas[winner.run])
            key = (arena.model_dump_json(), source)
            if key not in benches:
                benches[key] = UnseenBench(arena, source, windows, reporter)
            result = test_scores(winner.document, arena, source, benches[key])
            extra = {"run": winner.run, "generator": winner.generator, "run_seed": winner.seed, "rank": winner.rank, "search": winner.search}
            store.append("results", {**asdict(result), "extra": extra})
            step()
    return read_test_results(directory)
