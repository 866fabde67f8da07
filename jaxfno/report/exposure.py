"""Exposure: how many short batches a run took at the training loss where `stable` diverged.

A remedy run that never trained down to that loss was never exposed to what set the divergences
off (FINDINGS section 6: each began a few dozen steps after a short batch), so its "no collapse"
says nothing about prevention there. Counting the short batches each run took while its 100-step
median training loss was at or below the level of `stable`'s first divergence events, and the
events that followed, puts seeds and branches on one scale: events per exposure.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from jaxfno.evaluation.outcomes import epoch_steps, trailing_median
from jaxfno.pipeline import RunResult
from jaxfno.study import stage_a
from jaxfno.report.mechanism import short_batch


@dataclasses.dataclass(frozen=True)
class Exposure:
    short_batches: int  # taken at or below the level, before the first event from ``start`` on
    event: bool  # a first divergence event from ``start`` on
    short: bool = True  # whether the run's epochs end with a short batch at all
    # a branch's count includes the source's short batch just before the branch point (taken under
    # the source's recipe; the branch trained through its aftermath)
    at_branch_point: bool = False
    lrs: tuple[float, ...] = ()  # the learning rate applied at each short batch counted


def exposure(result: RunResult, level: float, start: int | None = None) -> Exposure:
    """The short batches ``result`` took while its trailing median loss (as in an event's
    ``trailing_median``) was at or below ``level``, from ``start`` (a branch's first step; by
    default the first step after epoch 1) up to its first divergence event from then on. The
    short batch just before ``start`` counts (its kick is still in Adam's moments at a branch
    point), and so does an event from it on; one that began before it (a source's, which a branch
    section counts when it reaches past the branch point) cannot have followed an exposure."""
    h = result.history
    steps = np.asarray(epoch_steps(h))
    branched = start is not None
    start = int(steps[0]) if start is None else start
    events = [e["step"] for e in result.verdict.get("outcome_details", {}).get("events", [])
              if e["step"] >= start - 1]
    loss = np.asarray(h["step_loss"], np.float64)
    level_at = trailing_median(np.where(np.isfinite(loss), loss, np.nan))
    until = events[0] if events else loss.size
    short = short_batch(result.config)
    ends = np.cumsum(steps) - 1 if short else np.array([], int)
    taken = [e for e in ends if start - 1 <= e < until and level_at[e] <= level]
    return Exposure(len(taken), bool(events), short, branched and bool(taken) and bool(taken[0] == start - 1),
                    tuple(float(h["lr"][e]) for e in taken))


ALPHA = 0.05  # a chance of no event below this tells prevention from delay


def none_p(rate: float, short_batches: int) -> float:
    """The chance of no event in ``short_batches`` exposures, each setting one off independently at
    ``rate`` (a reference group's events per exposure)."""
    return float((1.0 - rate) ** short_batches)


@dataclasses.dataclass(frozen=True)
class Group:
    label: str  # the runs' folder and machine, or "branches"
    what: str  # the arm, or a branch group's change
    condition: str
    device: str
    exposures: tuple[Exposure, ...]
    scale: str = "full"  # a proxy candidate's name: its `stable` is compared with full scale's, not a remedy
    epochs: int | None = None  # runs trained beyond the recipe's epochs (``longer_<machine>``): how many

    @property
    def short_batches(self) -> int:
        return sum(e.short_batches for e in self.exposures)

    @property
    def own_short_batches(self) -> int:
        """Those taken under the group's own recipe (a branch's, after its branch point)."""
        return self.short_batches - sum(e.at_branch_point for e in self.exposures)

    @property
    def own_lrs(self) -> list[float]:
        """The learning rates at the short batches counted under the group's own recipe."""
        return [lr for e in self.exposures for lr in e.lrs[int(e.at_branch_point):]]

    @property
    def events(self) -> int:
        return sum(e.event for e in self.exposures)

    @property
    def has_short(self) -> bool:
        return any(e.short for e in self.exposures)


def _reference(groups: list[Group], device: str) -> Group | None:
    """`stable` in `asrun` from seeds on ``device``: the rate a remedy is held against."""
    return next((g for g in groups if g.what == "stable" and g.condition == "asrun" and g.device == device
                 and g.label != "branches" and g.scale == "full" and g.epochs is None), None)


def _reference_of(groups: list[Group], g: Group) -> Group | None:
    """The rate ``g`` is held against: for runs trained beyond the recipe, `stable` trained as long
    in the same folder where it is there (itself, for that `stable`), else the machine's."""
    beside = next((r for r in groups if r.epochs and r.label == g.label and r.what == "stable"
                   and r.condition == g.condition), None) if g.epochs else None
    return beside or _reference(groups, g.device)


def _rate(g: Group) -> str:
    return "–" if not g.short_batches else f"{g.events / g.short_batches:.2g}"


def no_event_chance(g: Group, groups: list[Group], own: bool = False) -> float | None:
    """The chance of ``g`` taking its short batches (``own``: only those under its own recipe)
    without an event at its reference's rate; None where that does not apply (``g`` is the
    reference, has none, took none, or had an event)."""
    ref = _reference_of(groups, g)
    taken = g.own_short_batches if own else g.short_batches
    if g is ref or ref is None or not ref.short_batches or not taken or g.events:
        return None
    return none_p(ref.events / ref.short_batches, taken)


def runs_needed(g: Group, groups: list[Group], alpha: float = ALPHA) -> int | None:
    """How many more runs like ``g``'s (at their short batches per run so far), none with an
    event, would bring the chance of no event at the reference's rate below ``alpha``; None where
    the chance does not apply or is already below it."""
    chance = no_event_chance(g, groups)
    ref = _reference_of(groups, g)
    if chance is None or chance < alpha or not ref.events:  # no event at all: no rate to beat
        return None
    needed = math.log(alpha) / math.log(1.0 - ref.events / ref.short_batches)  # short batches in all
    return math.ceil((needed - g.short_batches) / (g.short_batches / len(g.exposures)))


def _no_event_cell(g: Group, groups: list[Group]) -> str:
    ref = _reference_of(groups, g)
    if g is ref or ref is None or not ref.short_batches:
        return "–"
    if not g.has_short:
        return "no short batch"
    if not g.short_batches:
        return "untested: none taken"
    chance = no_event_chance(g, groups)
    return "–" if chance is None else f"{chance:.2g}"


def group_name(g: Group) -> str:
    scale = "" if g.scale == "full" else f" at proxy scale `{g.scale}`"
    longer = f" trained for {g.epochs} epochs" if g.epochs else ""
    return f"`{g.what}`{scale}{longer} in `{g.condition}` ({g.device})"


def exposure_section(groups: list[Group], level: float) -> list[str]:
    if not groups:
        return []
    lines = ["### Exposure: short batches taken where `stable` diverged", "",
             f"Per group, the short batches its runs took while their training loss (the median of the 100 steps "
             f"before the short batch) was at or below {level:.3g}, the highest level at which a first divergence "
             "event of `stable` from seeds began on any machine (one level for all, so that every machine's runs are "
             "counted alike; section 3), "
             "up to their first divergence event (branches: from the short batch just before the branch point, so an "
             "event that began before that short batch is the source's and not counted here, unlike section 4), and "
             "the first events that followed (`jaxfno/report/exposure.py`). The last column is the chance of no event "
             "in that many short batches were each to set one off independently at the rate of `stable` in `asrun` "
             "on the same machine (an assumption: the short batches of one run are not independent). A group that "
             "took none was not tested at that level.", "",
             "| runs | arm or change | condition | machine | runs | short batches at the level (per run) | "
             "first divergence events | events per short batch | no event at `stable`'s rate |",
             "|---|---|---|---|---|---|---|---|---|"]
    for g in groups:
        counts = [e.short_batches for e in g.exposures]
        per_run = f"{min(counts)}" if min(counts) == max(counts) else f"{min(counts)}–{max(counts)}"
        what = f"{g.what} ({g.epochs} epochs)" if g.epochs else g.what
        lines.append(f"| {g.label} | {what} | {g.condition} | {g.device} | {len(g.exposures)} | "
                     f"{g.short_batches} ({per_run}) | {g.events} | {_rate(g)} | {_no_event_cell(g, groups)} |")
    return lines + [""]


def _no_kick(g: Group) -> str:
    """A condition without the batch gain: its short batch is no kick, so `asrun`'s rate asks
    whether the loss level alone sets a divergence off."""
    condition = stage_a.CONDITIONS.get(g.condition)
    return ("; without the batch gain its short batch is no kick, so this asks whether the level alone sets a "
            "divergence off" if condition is not None and condition.batch_gain == "none" else "")


def exposure_sentence(groups: list[Group], level: float) -> str | None:
    refs = [g for g in groups if _reference(groups, g.device) is g]
    if not refs:
        return None
    others = [g for g in groups if g not in refs]
    untested = [g for g in others if not g.short_batches and g.has_short]
    tested = [g for g in others if g.short_batches]

    def name(g: Group) -> str:
        return f"the branches with {g.what}" if g.label == "branches" else group_name(g)

    text = (f"Counting the short batches each run took while its 100-step median training loss was at or below "
            f"{level:.3g} (the highest level at which a first divergence event of `stable` began, on any machine), "
            "up to a first "
            "event: " + "; ".join(f"`stable` on {g.device} took {g.short_batches} and {g.events} first events "
                                  f"followed ({_rate(g)} per short batch)" for g in refs))
    if untested:
        text += ("; " + ", ".join(name(g) for g in untested) + " took none, so those runs did not test "
                 "prevention at that level")
    if tested:
        text += "; " + "; ".join(
            f"{name(g)} took {g.short_batches} with {g.events} first event{'s' if g.events != 1 else ''}"
            + ("" if (chance := no_event_chance(g, groups)) is None else
               f" (the chance of no event in that many short batches at `stable`'s per-short-batch rate"
               f"{' (trained as long)' if _reference_of(groups, g).epochs else ''} on that machine: "
               f"{chance:.2g}{_no_kick(g)})")
            for g in tested)
    return text + " (section 3; the short batches of one run are not independent)."
