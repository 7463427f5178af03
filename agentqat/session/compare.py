"""Comparisons: one evolve run per arm and seed at an equal budget on one shared evaluator pool and vLLM server,
then the uniform baselines, the winners re-scored on unseen text, and the report.

    DIR/compare.json               what the comparison is (CompareSettings), written once, read back to resume
    DIR/PLAN.md                    the pre-registration (hypotheses, arms, seeds, budget, quantity, test), written
                                   before it starts (`agentqat compare --write-plan DIR`; agentqat.study.plan)
    DIR/preparation.json           everything measured before the search, once for the whole comparison, with its
                                   cost (`prepare`): charged to no arm
    DIR/prior.json                 with --prior uniform+knapsack: the shared prior's documents and what making it cost
    DIR/runs/<arm>-seed<k>/        the evolve runs (resumable like any run)
    DIR/baseline/                  the uniform baselines on the arena's last stage (Pareto fronts)
    DIR/winners/<run>.json         every run's rank-1 winner, a strategy file `agentqat quantize` re-scores
    DIR/test/results.jsonl         every run's winners re-scored on the test split and any extra text file
    DIR/report.md, report.html     rebuilt from all of the above (`agentqat report DIR`)

Preparation: before any run, `prepare` measures what the arms ask for (the per-layer sensitivity probes of the
generators that read them, the knapsack's unit costs for a knapsack arm or the knapsack prior) once, through the
comparison's pool, and records it with its cost in DIR/preparation.json beside what every worker built when it
started (the level database of an arena with a ladder, llama.cpp's importance matrix of an [engine] arena). The
arms read the same values (kept in the cache directory, written back there from the record on a resume), and no
run's budget counts any of it: each arm spends its whole budget on its search, the knapsack arm playing
allocations from its first generation.

Runs are played seed by seed (every arm at seed 0, then every arm at seed 1, ...), so a comparison stopped
early is still balanced between its arms. An arm whose generator does not use the seed (the knapsack allocator)
is played at the first seed only: its runs at other seeds would repeat it match for match.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from agentqat.arena.config import Arena
from agentqat.errors import UserError
from agentqat.progress import Reporter
from agentqat.rundir.manifest import LlmSettings
from agentqat.rundir.paths import BASELINE_DIR, COMPARE_FILE, MANIFEST_FILE, PREPARATION_FILE, PRIOR_FILE, RUNS_DIR
from agentqat.rundir.store import read_json_object, write_json_atomic
from agentqat.session.resources import Resources

PRIORS = ("uniform", "uniform+knapsack")
BASELINE_BITS = (4, 3)
BASELINE_METHODS = ("rtn", "gptq", "awq", "hqq", "nf4")
ARM_NAME = r"^[a-z0-9][a-z0-9_.+-]{0,40}$"


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Arm(_Frozen):
    """One arm of a comparison: a name (its runs' directory prefix), the generator it runs, and for LLM arms
    the LLM settings (proposer model, ablations)."""

    name: str = Field(pattern=ARM_NAME)
    generator: str
    llm: LlmSettings | None = None
    seeds: tuple[int, ...] | None = None  # an arm added to a recorded comparison may play fewer of its seeds


class CompareSettings(_Frozen):
    """What a comparison is: the arena, the arms, the seeds and the equal budget every run gets."""

    kind: str = "compare"
    arena: Arena
    arms: tuple[Arm, ...] = Field(min_length=1)
    seeds: tuple[int, ...] = Field(min_length=1)
    match_budget: int = Field(gt=0)
    population: int = Field(gt=0)
    generations: int = Field(gt=0)
    token_budget: int | None = Field(None, gt=0)
    test_corpus: str | None = None
    confirm_arena: Arena | None = None  # the full arena the winners are confirmed on (agentqat.study.confirm)
    prior: Literal[PRIORS] = "uniform"  # every arm's start: the best uniform strategies, plus the knapsack allocation

    @field_validator("arms")
    @classmethod
    def _unique_arm_names(cls, arms: tuple[Arm, ...]) -> tuple[Arm, ...]:
        names = [arm.name for arm in arms]
        if len(set(names)) != len(names):
            raise ValueError(f"arm names must be unique, got {names}")
        return arms

    def run_name(self, arm: Arm, seed: int) -> str:
        """Returns the directory name of an arm's run at `seed`."""
        return f"{arm.name}-seed{seed}"

    def seeds_of(self, arm: Arm) -> tuple[int, ...]:
        """Returns the seeds an arm is played at: every seed, or the first alone for a generator whose proposals
        do not depend on the seed (its other runs would repeat that run match for match)."""
        from agentqat.generators import uses_seed

        seeds = arm.seeds or self.seeds
        return seeds if uses_seed(arm.generator) else seeds[:1]

    def llm_settings(self) -> tuple[LlmSettings, ...]:
        """Returns the LLM arms' settings: the shared resources start one vLLM server per proposer model."""
        return tuple(arm.llm for arm in self.arms if arm.llm is not None)

    def manifest(self, arm: Arm, seed: int, prior: tuple[dict, ...] | None = None):
        """Returns the evolve manifest of an arm's run at `seed`: the comparison's budget, the shared `prior`
        (None: the arena's uniform prior)."""
        from agentqat.session.evolve import evolve_manifest

        return evolve_manifest(
            self.arena, arm.llm, prior, generator=arm.generator, seed=seed, population=self.population,
            generations=self.generations, patience=self.generations, match_budget=self.match_budget,
            token_budget=self.token_budget, stop_when_clear=False,
        )  # fmt: skip


def parse_arm(spec: str, llm: LlmSettings) -> Arm:
    """Returns the arm a spec names: GENERATOR, then for LLM arms any of "/no-reflection", "/no-sensitivities"
    and "@MODEL" (the proposer); `llm` gives the rest of the LLM settings. "llm/no-reflection" is the arm
    "llm-no-reflection"."""
    from agentqat.generators import GENERATORS

    head, _, model = spec.partition("@")
    generator, *ablations = head.split("/")
    if generator not in GENERATORS:
        raise UserError(f"arm {spec!r}: unknown generator {generator!r}", f"use one of {', '.join(sorted(GENERATORS))}")
    unknown = set(ablations) - {"no-reflection", "no-sensitivities"}
    if unknown or ((ablations or model) and generator != "llm"):
        raise UserError(f"arm {spec!r}: {sorted(unknown) or 'ablations and @MODEL'} apply to llm arms only as "
                        "/no-reflection, /no-sensitivities, @MODEL", "write e.g. llm/no-reflection or llm@gemma3-270m")  # fmt: skip
    name = "-".join([generator, *ablations] + ([Path(model).name] if model else []))
    if generator != "llm":
        return Arm(name=name, generator=generator)
    settings = llm.model_copy(update={"reflection": "no-reflection" not in ablations,
                                      "sensitivities": "no-sensitivities" not in ablations, "model": model or llm.model})  # fmt: skip
    return Arm(name=name, generator=generator, llm=settings)


def parse_seeds(text: str) -> tuple[int, ...]:
    """Returns the seeds of "0-4" or "0,1,5" (UserError otherwise)."""
    if re.fullmatch(r"\d+-\d+", text.strip()):
        first, last = (int(part) for part in text.split("-"))
        if first <= last:
            return tuple(range(first, last + 1))
    elif re.fullmatch(r"\d+(,\d+)*", text.replace(" ", "")):
        return tuple(dict.fromkeys(int(part) for part in text.replace(" ", "").split(",")))
    raise UserError(f"seeds {text!r} are not a range like 0-4 or a list like 0,1,5", "write the seeds as 0-4 or 0,1,5")


def write_settings(directory: Path, settings: CompareSettings) -> None:
    """Writes DIR/compare.json (UserError when the directory holds another comparison)."""
    path = Path(directory) / COMPARE_FILE
    if path.exists() and read_settings(directory) != settings:
        raise UserError(f"{directory} holds another comparison", "resume the recorded comparison or pick another name")
    Path(directory).mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, settings.model_dump(mode="json"))


def _extended(directory: Path, settings: CompareSettings) -> CompareSettings:
    """Returns `settings` after recording them over DIR/compare.json (a resume that adds to the comparison)."""
    write_json_atomic(Path(directory) / COMPARE_FILE, settings.model_dump(mode="json"))
    return settings


def set_confirm_arena(directory: Path, arena: Arena) -> CompareSettings:
    """Returns the recorded comparison's settings with `arena` as the arena its winners are confirmed on, recorded
    (a resume may add it: it plays nothing the runs depend on)."""
    return _extended(directory, read_settings(directory).model_copy(update={"confirm_arena": arena}))


def add_arms(directory: Path, arms: tuple[Arm, ...], seeds: tuple[int, ...] | None = None) -> CompareSettings:
    """Returns the recorded comparison's settings with `arms` added, played at `seeds` (default: every seed of the
    comparison), recorded; UserError for an arm it has or seeds it does not. The runs already recorded keep
    their budget, prior and seeds, so the new arms are compared on equal terms."""
    settings = read_settings(directory)
    taken = {arm.name for arm in settings.arms} & {arm.name for arm in arms}
    if taken:
        raise UserError(f"the comparison already has the arm(s) {', '.join(sorted(taken))}", "name only new arms in --add-arms")
    if seeds is not None and not set(seeds) <= set(settings.seeds):
        raise UserError(f"seeds {sorted(set(seeds) - set(settings.seeds))} are not the comparison's ({', '.join(map(str, settings.seeds))})",
                        "add arms at some of the comparison's seeds")  # fmt: skip
    added = tuple(arm.model_copy(update={"seeds": seeds}) for arm in arms)
    return _extended(directory, settings.model_copy(update={"arms": settings.arms + added}))


def read_settings(directory: Path) -> CompareSettings:
    """Returns the settings recorded in DIR/compare.json (one UserError line when missing or damaged)."""
    document = read_json_object(Path(directory) / COMPARE_FILE)
    try:
        return CompareSettings.model_validate(document)
    except ValidationError as error:
        first = error.errors()[0]
        raise UserError(f"{directory}/{COMPARE_FILE} is not a comparison: {'.'.join(map(str, first['loc']))}: {first['msg']}",
                        "restore the file or start a new comparison") from None  # fmt: skip


def run_compare(
    directory: Path,
    settings: CompareSettings | None = None,
    *,
    workers: int | None = None,
    ray_address: str | None = None,
    observer_for: Callable[[str], object] | None = None,
    reporter: Reporter | None = None,
) -> tuple[Path, Path]:
    """Returns the paths of the report of the comparison in `directory`: a new one of `settings`, or (None) the
    recorded one resumed. Every run, the baselines and the re-evaluations already recorded are not played again.
    `observer_for(run_name)` gives each run's live view."""
    from contextlib import nullcontext

    from agentqat.report import build_report
    from agentqat.session.evolve import run_evolve
    from agentqat.study.confirm import confirm_winners
    from agentqat.study.plan import PlanError, register
    from agentqat.study.unseen import TEST_STAGE, reevaluate, write_winners

    directory = Path(directory)
    if settings is None:
        settings = read_settings(directory)
    else:
        new = not (directory / COMPARE_FILE).exists()
        try:
            if new:
                register(directory)  # the plan as it is when the comparison starts
        except PlanError as error:
            raise UserError(str(error), "fix the hypotheses block of PLAN.md (see agentqat/study/plan.py)") from None
        write_settings(directory, settings)
    resources = Resources(settings.arena, workers, ray_address, settings.llm_settings(), directory, reporter)
    with resources:
        prepare(directory, settings, resources.pool.run, reporter)
        prior = shared_prior(directory, settings, resources.pool.run, reporter)
        for seed in settings.seeds:
            for arm in (arm for arm in settings.arms if seed in settings.seeds_of(arm)):
                run = directory / RUNS_DIR / settings.run_name(arm, seed)
                manifest = None if (run / MANIFEST_FILE).exists() else settings.manifest(arm, seed, prior)
                observer = observer_for(run.name) if observer_for else None
                with observer if observer is not None else nullcontext():
                    run_evolve(run, manifest, resources=resources, observer=observer)
        play_baselines(directory, settings, resources, reporter)
    write_winners(directory)
    sources = (TEST_STAGE,) + ((settings.test_corpus,) if settings.test_corpus else ())
    reevaluate(directory, sources, reporter=reporter)
    if settings.confirm_arena is not None:
        confirm_winners(directory, settings.confirm_arena, reporter=reporter)
    return build_report(directory)


def _askers(settings: CompareSettings) -> dict[str, list[str]]:
    """Returns, per preparation the comparison needs, the arms that ask for it ("prior" for the shared prior)."""
    from agentqat.generators import GENERATORS

    asked: dict[str, list[str]] = {}
    for arm in settings.arms:
        factory = GENERATORS[arm.generator]
        if getattr(factory, "uses_sensitivities", False) and (arm.llm is None or arm.llm.sensitivities):
            asked.setdefault("sensitivities", []).append(arm.name)
        if hasattr(factory, "shared_preparation"):
            asked.setdefault(arm.generator, []).append(arm.name)
    if settings.prior == "uniform+knapsack":
        asked.setdefault("knapsack", []).append("prior")
    return asked


def prepare(directory: Path, settings: CompareSettings, play, reporter: Reporter | None = None) -> dict:
    """Returns the comparison's preparation (DIR/preparation.json): what the arms ask for, measured once with `play`
    (the comparison's pool, not any run's player) or read from the cache directory, recorded with its matches and
    evaluated tokens; and what every worker builds before its first match (the level database, an [engine]'s
    importance matrix), with the calibration tokens it reads. Charged to no arm. A recorded preparation is given
    back to the cache directory (where the arms' runs read it) and only what an added arm asks for is measured."""
    from dataclasses import asdict

    from agentqat import defaults
    from agentqat.arena.probes import cache_file, shared_sensitivities
    from agentqat.generators.knapsack import costs_file, shared_costs
    from agentqat.session.evolve import search_space

    directory, arena, cache = Path(directory), settings.arena, defaults.cache_dir()
    path = directory / PREPARATION_FILE
    recorded = read_json_object(path) if path.is_file() else {}
    if not recorded and _recorded_in_run(directory):
        return {}  # recorded before preparation was shared: its runs resume as they were played, nothing is added
    items = {item["what"]: item for item in recorded.get("items", [])}
    for item in items.values():  # the record is what every arm reads: back into the cache where it is missing
        if item.get("cache") and not (cache / item["cache"]["file"]).is_file():
            write_json_atomic(cache / item["cache"]["file"], item["cache"]["content"])
    asked = _askers(settings)
    space = None
    if "sensitivities" in asked and "sensitivity probes" not in items:
        space = space or search_space(arena, reporter)
        measured = shared_sensitivities(play, arena, space.facts, cache, reporter)
        file = cache_file(arena, cache)
        items["sensitivity probes"] = {
            "what": "sensitivity probes", "asked_by": asked["sensitivities"], "matches": measured.matches, "tokens": measured.tokens,
            "detail": "one match per decoder layer, that layer alone at 3 bits, on the arena's first stage",
            "cache": {"file": str(file.relative_to(cache)), "content": {**asdict(measured), "arena": arena.name, "cached": False}},
        }  # fmt: skip
    if "knapsack" in asked and "knapsack unit costs" not in items:
        space = space or search_space(arena, reporter)
        _, spent = shared_costs(play, arena, space, cache, reporter)
        file = costs_file(arena, cache)
        items["knapsack unit costs"] = {
            "what": "knapsack unit costs", "asked_by": asked["knapsack"], "matches": spent.matches, "tokens": spent.tokens,
            "detail": "one match per unit and ladder level, that unit alone at that level, on the arena's first stage",
            "cache": {"file": str(file.relative_to(cache)), "content": read_json_object(file)},
        }  # fmt: skip
    calibration = arena.calibration_windows * arena.window_tokens
    if arena.levels is not None and "level database" not in items:
        items["level database"] = {"what": "level database", "asked_by": ["every arm"], "matches": 0, "tokens": 0, "calibration_tokens": calibration,
                                   "detail": f"the {len(arena.levels.ladder)} levels of the arena's ladder, built by each worker before its first match"}  # fmt: skip
    if arena.engine is not None and "importance matrix" not in items:
        items["importance matrix"] = {"what": "importance matrix", "asked_by": ["every arm"], "matches": 0, "tokens": 0, "calibration_tokens": calibration,
                                      "detail": f"llama-imatrix, {arena.calibration_windows} chunks of {arena.window_tokens} calibration tokens"}  # fmt: skip
    record = {
        "charged_to": "no arm",
        "note": "measured once for the comparison before any run and given to every arm that asks; no run's budget counts it",
        "items": list(items.values()),
        "matches": sum(item["matches"] for item in items.values()),
        "tokens": sum(item["tokens"] for item in items.values()),
    }
    record = json.loads(json.dumps(record))  # as read back (layer keys as strings)
    if record != recorded:
        write_json_atomic(path, record)
    return record


def _recorded_in_run(directory: Path) -> bool:
    """Returns whether any run of the comparison was recorded before preparation was shared (its manifest has no
    `preparation`, or "in-run")."""
    manifests = (Path(directory) / RUNS_DIR).glob("*/manifest.json")
    return any(read_json_object(path).get("preparation", "in-run") == "in-run" for path in manifests)


def shared_prior(directory: Path, settings: CompareSettings, play, reporter: Reporter | None = None) -> tuple[dict, ...] | None:
    """Returns the prior every new run of the comparison starts from: None (each manifest's uniform prior) for
    "uniform"; for "uniform+knapsack" the uniform prior and the knapsack allocation (its unit costs measured once
    per arena with `play`, agentqat.generators.knapsack.shared_costs), kept in DIR/prior.json with what measuring
    them cost (preparation, charged to no run), so a resume or an added arm starts from the same documents."""
    if settings.prior == "uniform":
        return None
    path = Path(directory) / PRIOR_FILE
    if path.is_file():
        return tuple(read_json_object(path)["documents"])
    from agentqat import defaults
    from agentqat.generators.knapsack import knapsack_prior, shared_costs
    from agentqat.generators.prior import uniform_prior
    from agentqat.session.evolve import search_space

    space = search_space(settings.arena, reporter)
    costs, spent = shared_costs(play, settings.arena, space, defaults.cache_dir(), reporter)
    allocation = knapsack_prior(space, costs)
    documents = tuple(uniform_prior(space)) + ((allocation,) if allocation is not None else ())
    write_json_atomic(path, {"prior": settings.prior, "documents": list(documents), "preparation": {"matches": spent.matches, "tokens": spent.tokens}})
    return documents


def play_baselines(directory: Path, settings: CompareSettings, resources: Resources, reporter: Reporter | None = None) -> None:
    """Plays (or resumes) the uniform baselines (RTN, GPTQ, AWQ, HQQ, NF4 at 4 and 3 bits) on the arena's last
    stage in DIR/baseline/, on the comparison's shared pool."""
    from agentqat.arena.baselines import baseline_requests
    from agentqat.session.baseline import run_baseline

    arena = settings.arena
    stage = arena.stages[-1].name
    requests = baseline_requests(stage, arena.seed, list(BASELINE_BITS), [arena.calibration_windows], list(BASELINE_METHODS))
    run_baseline(Path(directory) / BASELINE_DIR, arena, requests, stage, arena.seed, resources=resources, reporter=reporter)
