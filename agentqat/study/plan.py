"""Pre-registration of a comparison: DIR/PLAN.md, written before the comparison runs, and which of its hypotheses held.

PLAN.md is Markdown for people (question, arms, seeds, budget, primary quantity, test, what would change the
conclusion) with one fenced block for the report, tagged `hypotheses`:

    ```hypotheses
    alpha: 0.05
    H1: arm llm < arm random on final_kl
    H2: arm llm != arm evo on test_kl
    ```

Each hypothesis names two arms (as the comparison names them, e.g. llm-no-reflection for llm/no-reflection), a
direction (`<`: the first arm's values tend lower, i.e. better; `>`: higher; `!=`: they differ) and a quantity: a
report quantity in lower case with every run of other characters as one underscore (final_kl, final_perplexity,
kl_auc_tokens, tokens_to_baseline_kl, test_kl, test_perplexity, gpl_3_txt_kl for a --test-corpus file gpl-3.txt,
full_arena_kl, ...). Every hypothesis is tested as the report tests arms (`agentqat.report.analysis`): exact
two-sided Mann-Whitney with ties on the arms' per-run values, or, against an arm that does not use the seed and
played once, the exact signed-rank test against its one value; the family for Holm's adjustment is the plan's
hypotheses. A hypothesis held when its Holm-adjusted two-sided p is below alpha and the effect (Cliff's delta) has
its direction; "no result" when an arm or the quantity is missing or an arm never produced a value.

`write_plan` writes the template `agentqat compare --write-plan DIR` starts from. When a comparison starts with a
PLAN.md in its directory, `register` records the plan's SHA-256 (DIR/plan-registered.json), so the report can say
whether the plan it reads is the one the comparison started with.
"""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from agentqat.errors import UserError
from agentqat.generators import uses_seed
from agentqat.rundir.paths import COMPARE_FILE, PLAN_FILE, REGISTERED_FILE
from agentqat.rundir.store import read_json_object, write_json_atomic
from agentqat.study.stats import NO_RESULT, compare_arms, compare_with_value, holm

BLOCK = re.compile(r"^```hypotheses[ \t]*\n(.*?)^```", re.MULTILINE | re.DOTALL)
HYPOTHESIS = re.compile(r"^(H[0-9A-Za-z_.-]*)\s*:\s*arm\s+(\S+)\s*(<|>|!=)\s*arm\s+(\S+)\s+on\s+([a-z0-9_]+)\s*$")
DEFAULT_ALPHA = 0.05
DIRECTIONS = {"<": "lower than", ">": "higher than", "!=": "different from"}


@dataclass(frozen=True)
class Hypothesis:
    """One pre-registered hypothesis: arm `a` against arm `b` on `quantity` (a `quantity_key`)."""

    name: str
    a: str
    direction: str  # "<", ">" or "!="
    b: str
    quantity: str

    def text(self) -> str:
        return f"{self.name}: {self.a} {DIRECTIONS[self.direction]} {self.b} on {self.quantity}"


@dataclass(frozen=True)
class Plan:
    """The machine-readable part of a PLAN.md."""

    hypotheses: tuple[Hypothesis, ...]
    alpha: float = DEFAULT_ALPHA


@dataclass(frozen=True)
class Outcome:
    """What became of one hypothesis: the test (None when there was none), Holm-adjusted p over the plan's family,
    and the verdict: "held", "not held" or "no result" (with why)."""

    hypothesis: Hypothesis
    test: object | None  # agentqat.study.stats.Comparison
    p_holm: float | None
    verdict: str
    why: str = ""


class PlanError(ValueError):
    """A PLAN.md whose hypotheses block does not parse (the message names the line)."""


def quantity_key(quantity: str) -> str:
    """Returns the plan's name of a report quantity: "final KL" -> "final_kl", "gpl-3.txt KL" -> "gpl_3_txt_kl"."""
    return re.sub(r"[^a-z0-9]+", "_", quantity.lower()).strip("_")


def parse_plan(text: str) -> Plan | None:
    """Returns the plan's hypotheses block (None when PLAN.md has none); PlanError naming a line it cannot read."""
    found = BLOCK.search(text)
    if found is None:
        return None
    hypotheses, alpha = [], DEFAULT_ALPHA
    for line in found.group(1).splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        if line.lower().startswith("alpha:"):
            try:
                alpha = float(line.split(":", 1)[1])
            except ValueError:
                raise PlanError(f"PLAN.md: alpha is not a number: {line!r}") from None
            if not 0 < alpha < 1:
                raise PlanError(f"PLAN.md: alpha must lie between 0 and 1, got {alpha}")
            continue
        match = HYPOTHESIS.match(line)
        if match is None:
            raise PlanError(f"PLAN.md: not a hypothesis (H<n>: arm A <|>|!= arm B on QUANTITY) nor alpha: {line!r}")
        hypotheses.append(Hypothesis(*match.groups()))
    names = [h.name for h in hypotheses]
    if len(set(names)) != len(names):
        raise PlanError(f"PLAN.md: hypothesis names repeat: {names}")
    return Plan(tuple(hypotheses), alpha)


def evaluate(plan: Plan, records, summaries) -> list[Outcome]:
    """Returns each hypothesis's outcome on the comparison's records and arm summaries (`agentqat.report.analysis`):
    the tests the module docstring describes, Holm-adjusted over the plan's hypotheses."""
    by_arm = {summary.arm: summary for summary in summaries}
    rng = np.random.default_rng(0)
    tests: list[object | None] = []
    whys: list[str] = []
    for h in plan.hypotheses:
        missing = [arm for arm in (h.a, h.b) if arm not in by_arm]
        keys = {quantity_key(q): q for q in by_arm[h.a].values} if not missing else {}
        if missing or h.quantity not in keys:
            tests.append(None)
            whys.append(f"the comparison has no arm {', '.join(missing)}" if missing else f"no quantity {h.quantity} was recorded")
            continue
        quantity = keys[h.quantity]
        a, b = by_arm[h.a].values[quantity], by_arm[h.b].values[quantity]
        if not a or not b:
            tests.append(None)
            whys.append(f"{h.a if not a else h.b} has no value of {h.quantity}")
            continue

        def single(arm: str) -> bool:
            return len(by_arm[arm].seeds) == 1 and not uses_seed(records.of_arm(arm)[0].generator)

        if single(h.b) and not single(h.a):
            test = compare_with_value(h.a, a, h.b, b[0], quantity, alpha=plan.alpha)
        elif single(h.a) and not single(h.b):
            test = compare_with_value(h.b, b, h.a, a[0], quantity, alpha=plan.alpha)
            test = _swapped(test)
        else:
            test = compare_arms(h.a, a, h.b, b, quantity, rng, alpha=plan.alpha)
        tests.append(test)
        whys.append("" if test.kind != NO_RESULT else "an arm never produced a value")
    adjusted = holm([t.p_two_sided if t is not None and t.kind != NO_RESULT else None for t in tests])
    outcomes = []
    for h, test, p, why in zip(plan.hypotheses, tests, adjusted, whys):
        if test is None or p is None or (isinstance(p, float) and math.isnan(p)):
            outcomes.append(Outcome(h, test, None, "no result", why or "not tested"))
            continue
        sign = test.cliffs_delta
        direction = h.direction == "!=" or (sign < 0 if h.direction == "<" else sign > 0)
        held = p < plan.alpha and direction
        if held:
            why = f"Holm-adjusted p {p:.3g} < {plan.alpha:g}" + ("" if h.direction == "!=" else f", Cliff's delta {sign:+.2f}")
        elif p < plan.alpha:
            why = f"significant the other way (Cliff's delta {sign:+.2f})"
        else:
            floor = getattr(test, "p_floor", math.nan)
            why = f"Holm-adjusted p {p:.3g} >= {plan.alpha:g}" + (
                f"; the smallest attainable p here is {floor:.3g}, so it could not hold" if floor >= plan.alpha else "")
        outcomes.append(Outcome(h, test, p, "held" if held else "not held", why))
    return outcomes


def _swapped(test):
    """Returns a one-sample test read from the other arm's side: the single-valued arm first, the effect negated."""
    import dataclasses

    return dataclasses.replace(test, cliffs_delta=-test.cliffs_delta)


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def register(directory: Path) -> dict | None:
    """Records the SHA-256 of DIR/PLAN.md in DIR/plan-registered.json when the comparison starts (kept as first
    recorded); returns the record (None without a PLAN.md). PlanError when its hypotheses block does not parse."""
    plan, record = Path(directory) / PLAN_FILE, Path(directory) / REGISTERED_FILE
    if not plan.is_file():
        return None
    text = plan.read_text(encoding="utf-8")
    parse_plan(text)
    if record.is_file():
        return read_json_object(record)
    registered = {"file": PLAN_FILE, "sha256": sha256(text), "note": "PLAN.md as it was when the comparison started"}
    write_json_atomic(record, registered)
    return registered


def registered_hash(directory: Path) -> str | None:
    """Returns the SHA-256 DIR/plan-registered.json holds (None without one)."""
    path = Path(directory) / REGISTERED_FILE
    return read_json_object(path).get("sha256") if path.is_file() else None


def plan_template(arena: str, arms: list[str], seeds: str, budget: str, test_corpus: str | None = None) -> str:
    """Returns a PLAN.md to fill in before a comparison runs, with the comparison's arms, seeds and budget."""
    reference = arms[0] if arms else "llm"
    lines = "\n".join(f"H{k}: arm {reference} < arm {arm} on final_kl" for k, arm in enumerate(arms[1:], 1))
    unseen = f" and on {test_corpus}" if test_corpus else ""
    return f"""# Plan: {arena}

Written before the comparison runs; the report (`agentqat report DIR`) states which hypotheses held. Change nothing
below once the first run has started: amendments go at the end, dated, with why.

## Question

(What the comparison decides, in one or two sentences.)

## Design

- Arena: {arena}
- Arms: {', '.join(arms)} (an arm whose generator does not use the seed, such as knapsack, is played once)
- Seeds: {seeds}
- Budget per run: {budget}; preparation (sensitivity probes, the knapsack's unit costs, level database) is measured
  once for the comparison and charged to no arm
- Primary quantity: final KL on the search split (the best last-stage survivor of each run)
- Secondary, reported: each run's winner on the test split{unseen}
- Test: exact two-sided Mann-Whitney with ties (mid-ranks) per hypothesis; against an arm played once, the exact
  signed-rank test against its one value; Holm's adjustment across the hypotheses below; alpha below

## Hypotheses

Machine-readable: one line per hypothesis, `H<n>: arm A <|>|!= arm B on QUANTITY` (QUANTITY: a report quantity
in lower case with underscores, e.g. final_kl, test_kl, full_arena_perplexity).

```hypotheses
alpha: 0.05
{lines}
```

## What would change the conclusion

(Results that would make the answer different, and what is not concluded either way.)
"""


def write_plan(directory: Path, text: str) -> Path:
    """Writes DIR/PLAN.md (UserError when one is there: a plan is not overwritten)."""
    path = Path(directory) / PLAN_FILE
    if path.exists():
        raise UserError(f"{path} exists: a plan is not overwritten", "edit it, or pick another DIR")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def require_plan(directory: Path) -> None:
    """Raises UserError when `directory` would hold a new comparison under a reports/ folder without a DIR/PLAN.md:
    a study committed there is pre-registered first (a comparison already started there is resumed as it is)."""
    directory = Path(directory)
    if directory.resolve().parent.name == "reports" and not (directory / COMPARE_FILE).exists() and not (directory / PLAN_FILE).is_file():
        raise UserError(f"a new comparison under reports/ is pre-registered first: {directory / PLAN_FILE} does not exist",
                        f"write it with agentqat compare --write-plan {directory} (and the same options), fill it in, then start")  # fmt: skip
