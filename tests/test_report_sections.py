"""Report sections written from run files: the null-perturbation branches (grouped by what their
configs change, counted after the branch point) and the short batch's kick."""

import pytest

from jaxfno.config import RunConfig
from jaxfno.io import write_json
from jaxfno.report.branches import (branch_rows, group_summary, null_perturbation_section, pooled_section,
                                    pooled_sentence, pooled_summary, source_row)
from jaxfno.report.statistics import fisher_less, stratified_fisher_less


SOURCE = RunConfig().with_overrides(["train.seed=7"])


def _branch(folder, name, sets, outcome, event_steps, branch_epoch=2, steps=10, epochs=4, source=False,
            trailing_median=None, peak=None):
    run = folder / name
    cfg = RunConfig().with_overrides(sets)
    write_json(run / "config.json", cfg.to_dict())
    losses = [0.1] * (branch_epoch * steps) + [0.2] * ((epochs - branch_epoch) * steps)
    if peak is not None:  # a full batch's loss after the branch point
        losses[branch_epoch * steps + 1] = peak
    write_json(run / "history.json", {"val_loss": [0.1] * epochs, "epoch_steps": [steps] * epochs,
                                      "step_loss": losses, "lr": [cfg.optim.lr] * len(losses)})
    write_json(run / "metrics.json", {})
    write_json(run / "stats.json", {})
    events = [{"step": s, "epoch": s // steps, "peak_loss": 50.0} for s in event_steps]
    if trailing_median is not None:
        events = [{**e, "trailing_median": trailing_median} for e in events]
    write_json(run / "verdict.json", {"outcome": outcome, "outcome_details": {
        "events": events, "final_val_loss": 0.2, "contrast": 1.0}})
    if not source:
        write_json(run / "branch.json", {"source": "src", "source_config_hash": SOURCE.config_hash(),
                                         "kind": "last", "epoch": branch_epoch - 1})


def test_groups_changes_and_counts_after_the_branch_point(tmp_path):
    for i in (1, 2, 3):
        # the null group: one collapse; one healthy branch carries an event from before the branch point
        _branch(tmp_path, f"seed_order{i}", [f"train.seed={i}"], "diverged" if i == 1 else "healthy",
                [25] if i == 1 else ([5] if i == 2 else []))
        # an excursion the branch's own steps make, detected from step 15 (its window 15..24 reaches step 20)
        _branch(tmp_path, f"lr_order{i}", [f"train.seed={i}", "optim.lr=0.00025"], "diverged_recovered", [15])
        _branch(tmp_path, f"clip_order{i}", [f"train.seed={i}", "optim.grad_clip=0.5"], "healthy", [])
    _branch(tmp_path, "not_a_branch", ["train.seed=9"], "diverged", [25])

    groups = branch_rows(tmp_path)
    assert sorted(groups) == ["clip", "lr", "seed"] and all(len(g) == 3 for g in groups.values())
    assert all(r["event"]["step"] == 15 for r in groups["lr"]) and groups["lr"][0]["peak_loss"] == 0.2
    assert {r["first_step"] for g in groups.values() for r in g} == {20}
    assert [r["event"] is not None for r in groups["seed"]] == [True, False, False]

    summary = group_summary(groups)
    assert summary["clip"]["change"] == "optim.grad_clip=0.5"
    assert summary["seed"]["change"] == "nothing but the data order"
    assert (summary["seed"]["collapsed"]["k"], summary["clip"]["collapsed"]["k"]) == (1, 0)
    assert (summary["seed"]["event"]["k"], summary["clip"]["event"]["k"]) == (1, 0)
    assert summary["seed"]["event"]["fisher_p_vs_null"] is None
    assert summary["clip"]["event"]["fisher_p_vs_null"] == pytest.approx(fisher_less(0, 3, 1, 3))

    # the source's own continuation joins the null group; a run that is not the source does not
    _branch(tmp_path / "src", "run", ["train.seed=7"], "diverged", [30], source=True)
    _branch(tmp_path / "other", "run", ["train.seed=8"], "diverged", [30], source=True)
    assert source_row(tmp_path, tmp_path / "src" / "run", groups)["outcome"] == "diverged"
    assert source_row(tmp_path, tmp_path / "other" / "run", groups) is None
    shown = "\n".join(null_perturbation_section(tmp_path, source=tmp_path / "src" / "run"))
    assert "run (the source's own continuation; not counted)" in shown and "| seed | nothing but" in shown

    text = "\n".join(null_perturbation_section(tmp_path))
    assert "| clip | optim.grad_clip=0.5 | 3 | 0/3 [0.00, 0.56], p 0.5 | 0/3" in text and "step 25 (epoch 3)" in text


def test_pooled_over_branch_points(tmp_path):
    """Two branch points: counts add up, the test is stratified by point (not a pooled 2×2), and
    the median steps to an event run from each branch point."""
    a, b = tmp_path / "after2", tmp_path / "after3"
    for i in (1, 2, 3):
        _branch(a, f"seed_order{i}", [f"train.seed={i}"], "diverged", [22 + i])  # 3, 4, 5 steps after step 20
        _branch(a, f"lr_order{i}", [f"train.seed={i}", "optim.lr=0.00025"], "healthy", [])
    for i in (1, 2):
        _branch(b, f"seed_order{i}", [f"train.seed={i}"], "diverged" if i == 1 else "healthy",
                [31] if i == 1 else [], branch_epoch=3)
        _branch(b, f"lr_order{i}", [f"train.seed={i}", "optim.lr=0.00025"], "healthy", [], branch_epoch=3)
        _branch(b, f"clip_order{i}", [f"train.seed={i}", "optim.grad_clip=0.5"], "healthy", [], branch_epoch=3)

    s = pooled_summary([a, b])
    assert (s["seed"]["n"], s["seed"]["collapsed"]["k"], s["seed"]["points"]) == (5, 4, 2)
    assert s["seed"]["branch_epochs"] == [2, 3] and s["seed"]["collapsed"]["p_vs_null"] is None
    assert (s["lr"]["n"], s["lr"]["collapsed"]["k"]) == (5, 0)
    p = s["lr"]["collapsed"]["p_vs_null"]
    assert p == pytest.approx(stratified_fisher_less([(0, 3, 3, 3), (0, 2, 1, 2)])) == pytest.approx(0.05 * 0.5)
    assert p != pytest.approx(fisher_less(0, 5, 4, 5))  # not the pooled 2×2
    assert s["clip"]["points"] == 1 and s["clip"]["collapsed"]["p_vs_null"] == pytest.approx(fisher_less(0, 2, 1, 2))
    assert s["lr"]["changed"] == {"optim.lr": 0.00025} and s["seed"]["changed"] == {}
    # null delays 3, 4, 5 (point 1), 1 and 10 censored (point 2: 10 steps after step 30): median 4
    assert s["seed"]["median_delay"] == 4 and s["lr"]["median_delay"] is None

    table = "\n".join(pooled_section([a, b]))
    # paired by data order: 3 + 1 pairs where only the null branch collapsed, none the other way
    assert (s["lr"]["collapsed"]["paired_p"], s["lr"]["collapsed"]["pairs"]) == (pytest.approx(0.5 ** 4), 5)
    assert ("| optim.lr=0.00025 | 2 → 4, 3 → 4 | 5 | 0/5 [0.00, 0.43], p 0.025 (paired: 0.0625, 5 pairs) | "
            "0/5 [0.00, 0.43], p 0.025 (paired: 0.0625, 5 pairs) | not reached |") in table
    sentence = pooled_sentence([a, b])
    assert "from 2 checkpoints (after epochs 2, 3; trained to epoch 4) of one run" in sentence
    assert "only the data order collapsed in 4/5 [0.38, 0.96] (after epoch 2: 3/3, after epoch 3: 1/2)" in sentence
    assert "0/5 [0.00, 0.43] with optim.lr=0.00025 (p 0.025, paired 0.062; a divergence event in 0/5" in sentence
    assert sentence.endswith("These are branches of one trajectory, not seeds.")
    assert "also a transient LR cut" in sentence

    # a branch point of another source run (another config): a second trajectory, on a truncated horizon
    c = tmp_path / "other_after2"
    for i in (1, 2):
        for name, sets in (("seed_order", []), ("lr_order", ["optim.lr=0.00025"])):
            _branch(c, f"{name}{i}", [f"train.seed={i}", *sets], "healthy", [], epochs=3)
            write_json(c / f"{name}{i}" / "branch.json", {"source": "src2", "kind": "last", "epoch": 1,
                                                          "source_config_hash": "another"})
    assert pooled_summary([a, b, c])["seed"]["sources"] == 2
    sentence = pooled_sentence([a, b, c])
    assert "from 3 checkpoints (after epochs 2, 3; trained to epoch 3 or 4) of 2 runs" in sentence
    assert "(run 1 after epoch 2: 3/3, after epoch 3: 1/2; run 2 after epoch 2: 0/2)" in sentence
    assert "| optim.lr=0.00025 | 2 → 3, 2 → 4, 3 → 4 | 7 |" in "\n".join(pooled_section([a, b, c]))
    assert sentence.endswith("These are branches of 2 trajectories, not seeds.")


def test_pooled_branches_show_how_large_the_events_were(tmp_path):
    """A remedy whose branches have events of their own is set beside the null branches' by the
    largest full-batch step loss: a small excursion and a divergence both count as events."""
    for i in (1, 2):
        _branch(tmp_path, f"seed_order{i}", [f"train.seed={i}"], "diverged", [21], peak=300.0 * i)
        _branch(tmp_path, f"clip_order{i}", [f"train.seed={i}", "optim.grad_clip=0.5"], "diverged_recovered",
                [21], peak=0.4 + 0.05 * i)
        _branch(tmp_path, f"lr_order{i}", [f"train.seed={i}", "optim.lr=0.00025"], "healthy", [])
    s = pooled_summary([tmp_path])
    assert (s["clip"]["peaks"], s["seed"]["peaks"]) == ([0.45, 0.5], [300.0, 600.0])
    sentence = pooled_sentence([tmp_path])
    assert ("a divergence event in 2/2, p 1, paired 1, its branches' largest full-batch step loss 0.45–0.5 "
            "against 300–600 for the data-order-only ones") in sentence
    lr = sentence.split("with optim.lr=0.00025")[1]
    assert "largest full-batch" not in lr.split(")")[0]  # no events: nothing to size
    assert "| 1 | 0.45–0.5 |" in "\n".join(pooled_section([tmp_path]))


def test_pooled_branches_say_when_an_inherited_event_is_followed_by_one_of_their_own(tmp_path):
    """An event begun on the source's steps (from step 15, its window reaching past the branch
    point at step 20) is the branch's first; a second one on its own steps is said beside it."""
    for i in (1, 2):
        _branch(tmp_path, f"seed_order{i}", [f"train.seed={i}"], "diverged", [25])
        _branch(tmp_path, f"clip_order{i}", [f"train.seed={i}", "optim.grad_clip=0.5"], "diverged_recovered",
                [15, 26] if i == 1 else [15])
    s = pooled_summary([tmp_path])["clip"]
    assert (s["event"]["k"], s["inherited"], s["inherited_then_own"]) == (2, 2, 1)
    assert ("a divergence event in 2/2, p 1, paired 1, all of them begun before the branch point, 1 of those "
            "branches with a second one begun after it") in pooled_sentence([tmp_path])


def test_no_branches_yet(tmp_path):
    assert pooled_sentence([tmp_path / "missing"]) is None and pooled_section([tmp_path / "missing"]) == []
    assert "None finished yet" in "\n".join(null_perturbation_section(tmp_path / "missing"))


def test_kick_statistics_and_event_position(tmp_path):
    from jaxfno.report.mechanism import WINDOW, kick_row
    from jaxfno.pipeline import RunResult

    steps, epochs = 60, 4  # 16 * 59 + 9 patterns: each epoch ends with a 9-sample batch
    run = tmp_path / "run"
    cfg = RunConfig().with_overrides(["train.train_subset=953", "physics.batch_gain=upstream"])
    grad = []
    for e in range(epochs):
        grad += [8.0] * WINDOW + [4.0] * (steps - WINDOW - 1) + [12.0]
    grad[2 * steps + 30] = 500.0  # the event, 30 steps into epoch 3
    write_json(run / "config.json", cfg.to_dict())
    write_json(run / "history.json", {"val_loss": [0.1] * epochs, "epoch_steps": [steps] * epochs,
                                      "step_loss": [0.05] * (steps * epochs), "grad_norm": grad})
    for name in ("metrics.json", "stats.json"):
        write_json(run / name, {})
    write_json(run / "verdict.json", {"outcome": "diverged", "outcome_details": {
        "events": [{"step": 2 * steps + 30, "epoch": 2, "peak_loss": 9.0}]}})
    r = kick_row(RunResult.load(run))
    assert r["short"] and (r["short_grad"], r["after"], r["rest"]) == (12.0, 8.0, 4.0)
    assert (r["first_event"], r["steps_after_boundary"]) == (150, 30)
    assert r["clipped"] == 1.0  # every step of epochs 2.. before the event is above 0.5
    # flagged 4 steps before epoch 4's start: its 10-step look-ahead holds epoch 3's short batch
    write_json(run / "verdict.json", {"outcome": "diverged", "outcome_details": {
        "events": [{"step": 3 * steps - 4, "epoch": 2, "peak_loss": 9.0}]}})
    assert kick_row(RunResult.load(run))["steps_after_boundary"] == -4


def test_findings_pool_the_branch_points(tmp_path):
    """FINDINGS.md's answer and section 3 come from every branch point's folder."""
    from jaxfno.report.findings import BRANCH_POINTS, write_findings

    for epoch, (folder, _) in zip((2, 3), BRANCH_POINTS):
        for i in (1, 2):
            _branch(tmp_path / "stage_a_full_asrun" / folder, f"seed_order{i}", [f"train.seed={i}"], "diverged",
                    [10 * epoch + 2], branch_epoch=epoch)
            _branch(tmp_path / "stage_a_full_asrun" / folder, f"lr_order{i}", [f"train.seed={i}", "optim.lr=0.00025"],
                    "healthy", [], branch_epoch=epoch)
    text = write_findings(tmp_path, tmp_path / "FINDINGS.md")
    answer = text.split("## The answer so far")[1].split("## 1.")[0]
    assert "from 2 checkpoints (after epochs 2, 3; trained to epoch 4)" in answer and "collapsed in 4/4 [0.51, 1.00]" in answer
    section3 = text.split("## 3.")[1].split("## 4.")[0]
    assert "| optim.lr=0.00025 | 2 → 4, 3 → 4 | 4 |" in section3 and "Warmup-cosine" in section3
    assert (tmp_path / "FINDINGS.md").read_text() == text


def test_pooled_branches_say_how_low_the_remedy_went(tmp_path):
    """A remedy without events is set against the loss at which the null branches diverged."""
    from jaxfno.report.branches import pooled_section, pooled_sentence

    for i in (1, 2):  # 120 steps after the branch point at 0.2: whole 100-step windows exist
        _branch(tmp_path, f"seed_order{i}", [f"train.seed={i}"], "diverged", [230], steps=60,
                trailing_median=0.25 + 0.05 * i)
        _branch(tmp_path, f"lr_order{i}", [f"train.seed={i}", "optim.lr=0.00025"], "healthy", [], steps=60)
    sentence = pooled_sentence([tmp_path])
    assert "optim.lr=0.00025 reached a 100-step median training loss of 0.2, below the 0.3–0.35 at which" in sentence
    table = "\n".join(pooled_section([tmp_path]))
    assert "| not reached | 0.2 | 0.2 | – |" in table and "| 110 | 0.2 | 0.2 | 0.3–0.35 |" in table


def test_bottom_line_links_an_undecided_remedy_to_branches_that_lowered_the_lr_below_it():
    """A remedy whose seeds took too few short batches at the level, but took them at a learning
    rate no higher than LR branches that took enough there (after their branch points) without an
    event: the paragraph says so."""
    from jaxfno.report.exposure import Exposure, Group
    from jaxfno.report.findings import bottom_line

    def cell(arm, collapsed, n):
        return {"arm": arm, "condition": "asrun", "collapsed": collapsed, "n": n, "fisher_p_vs_stable": 0.1,
                "epochs": [20], "seeds": list(range(n))}

    cpu = {"stable@asrun": cell("stable", 2, 3), "stable_warmup@asrun": cell("stable_warmup", 0, 3)}
    stable = Group("`seeds_cpu`", "stable", "asrun", "cpu", (Exposure(2, True), Exposure(2, True)))  # rate 1/2
    null = {"n": 6, "collapsed": {"k": 6}, "event": {"k": 6}, "change": "nothing but the data order",
            "changed": {}, "sources": 1, "inherited": 0}

    def line(lrs, branch_batches, at_point=0, windows=((2, 4), (3, 4)), events=0):
        warmup = Group("`seeds_cpu`", "stable_warmup", "asrun", "cpu", (Exposure(2, False, lrs=lrs),))  # chance 0.25
        exposures = ((Exposure(branch_batches - at_point, False),)
                     + (Exposure(1, False, at_branch_point=True, lrs=(1e-3,)),) * at_point)
        lowered = {"n": 6, "collapsed": {"k": 0}, "event": {"k": events}, "change": "optim.lr=0.00025",
                   "changed": {"optim.lr": 0.00025}, "inherited": events, "windows": list(windows)}
        exposed = [stable, warmup, Group("branches", "optim.lr=0.00025", "asrun", "cpu", exposures)]
        return bottom_line([("cpu", cpu)], exposed, {"seed": null, "lr": lowered})

    assert ("`stable_warmup` on cpu took its 2 short batches at that loss at a learning rate of 3e-05–0.0001, no "
            "higher than the branches with optim.lr=0.00025 (cpu), which took 6 short batches at that loss after "
            "their branch points without any divergence event (the chance of none at `stable`'s rate 0.016, were the "
            "short batches independent, which those from one state are not): from `stable`'s own states just before "
            "a divergence, a learning rate that low kept the loss from diverging over the 1–2 epochs the branches "
            "ran, which is consistent with prevention") in line((1e-4, 3e-5), 6)
    assert "not the remedies' own states over theirs." in line((1e-4, 3e-5), 6)
    assert "over the 1 epoch the branches ran" in line((1e-4, 3e-5), 6, windows=((2, 3),))
    # the short batches counted at the branch points are the source's (taken at its LR): only the others count
    assert ("which took 5 short batches at that loss after their branch points (6 with the source's just before "
            "each point, whose aftermath they trained) without any divergence event (the chance of none at "
            "`stable`'s rate 0.031,") in line((1e-4,), 6, at_point=1)
    assert "no higher than the branches" not in line((1e-4,), 6, at_point=2)  # 4 of their own: chance 0.0625
    assert "no higher than the branches" not in line((5e-4, 1e-4), 6)  # one short batch above the branches' LR
    assert "no higher than the branches" not in line((1e-4,), 4)  # the branches took too few (chance 0.0625)
    assert "no higher than the branches" not in line((1e-4,), 6, events=2)  # events, if recovered from


def _stable_and_lowlr(folder, levels, highest=None):
    """Two seeds of `stable` that diverged at the given trailing-median levels, and of a healthy `stable_lowlr`;
    the remedy's lowest 100-step median after epoch 1 is 0.1 (windows from step 160; steps 60..159)."""
    from jaxfno.report.seeds import levels_sentence

    for seed, level in zip((1, 2), levels):
        _branch(folder / "asrun" / "stable", f"seed{seed}", [f"train.seed={seed}"], "diverged", [230],
                steps=60, source=True, trailing_median=level)
        _branch(folder / "asrun" / "stable_lowlr", f"seed{seed}", [f"train.seed={seed}", "optim.lr=0.00025"],
                "healthy", [], steps=60, source=True)
    return levels_sentence(folder, highest)


def test_seed_cells_say_whether_the_remedy_reached_stables_divergence_level(tmp_path):
    assert _stable_and_lowlr(tmp_path, (0.3, 0.3)) == (
        "`stable_lowlr`'s lowest 100-step median training loss after epoch 1 was 0.1, against 0.3 just before "
        "`stable`'s divergence events on the same machine; at the steps where `stable` diverged, the same seeds' `stable_lowlr` runs "
        f"were at 0.2, at a learning rate of 0.00025 against `stable`'s 0.001: it went below that level and did not diverge (`{tmp_path.name}`).")


def test_seed_cells_say_how_many_runs_of_a_remedy_came_into_stables_divergence_range(tmp_path):
    assert _stable_and_lowlr(tmp_path, (0.08, 0.12)).endswith(  # the remedy's 0.1 lies inside 0.08-0.12
        "2 of its 2 runs came down into that range, none diverged, so these seeds test it there only as far as the "
        f"short batches they took there (the exposure bullet) (`{tmp_path.name}`).")


def test_seed_cells_say_how_near_a_remedy_came_to_stables_divergence_level(tmp_path):
    assert _stable_and_lowlr(tmp_path, (0.08, 0.08)).endswith(
        "it descended more slowly and did not reach that level within 4 epochs (its closest run stayed 25 % above "
        f"the highest of those levels), so these seeds show fewer collapses in that time, not prevention (`{tmp_path.name}`).")
    # above this machine's levels, below another machine's: the runs that went there are named
    assert _stable_and_lowlr(tmp_path, (0.08, 0.08), highest=0.11).endswith(
        "not prevention; 2 of its 2 runs did go below the highest such level on any machine (0.11), and the short "
        f"batches they took there are counted in the exposure bullet (`{tmp_path.name}`).")
    assert _stable_and_lowlr(tmp_path, (0.08, 0.08), highest=0.09).endswith(f"not prevention (`{tmp_path.name}`).")


def test_level_sentence_places_the_divergences_in_the_descent():
    from types import SimpleNamespace

    from jaxfno.report.seeds import level_sentence

    def run(loss, event=None):
        events = [{"step": event, "trailing_median": loss[event - 1]}] if event else []
        return SimpleNamespace(history={"step_loss": loss, "epoch_steps": [50] * (len(loss) // 50)},
                               verdict={"outcome_details": {"events": events}})

    descent = [0.3] * 150 + [0.1] * 150  # epoch 1 (50 steps), then 0.3, then 0.1
    runs = [("stable (x)", run(descent + [9.0] * 20, event=300)), ("b (x)", run([0.3] * 300)),
            ("c (x)", run(descent)), ("c (x)", run([0.3] * 150 + [0.05] * 150)),
            ("control (x)", run([0.3] * 150 + [0.2] * 150 + [9.0] * 20, event=300))]
    assert level_sentence(runs) == (
        "Over the 5 full-scale `asrun` runs from seeds (both machines), `stable`'s 1 first divergence events "
        "began at a 100-step median training loss of 0.1 (other arms' first events: control (x) at 0.2). Of the "
        "runs without an event, 1 (lowest 0.05; c (x) 1) went lower than that without diverging, so this level "
        "alone does not set a divergence off; 1 (lowest 0.1; c (x) 1) came down into that range; 1 (lowest 0.3; "
        "b (x) 1) stayed above it (section 3).")
    assert level_sentence(runs[1:]) is None  # no divergence event of `stable` to place


def test_early_start_p():
    from jaxfno.report.mechanism import early_start_p

    assert early_start_p([(9, 100), (3, 100)], lead=0) == (10, pytest.approx(0.01))
    assert early_start_p([(99, 100)], lead=0) == (100, 1.0)
    # an event flagged 4 steps before the epoch's start (its look-ahead holds the short batch) is early
    assert early_start_p([(9, 100), (-4, 100)], lead=9) == (19, pytest.approx(0.19 ** 2))


def test_unique_counts_a_linked_run_once(tmp_path):
    from jaxfno.report.cells import unique

    (tmp_path / "run").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a").symlink_to(tmp_path / "run")
    assert unique([tmp_path / "run", tmp_path / "b", tmp_path / "a"]) == [tmp_path / "run", tmp_path / "b"]


def test_matrix_lists_every_arm_and_condition_once_per_machine():
    """The per-remedy table: each full-scale cell once per machine (a run linked into two folders is
    not repeated), "not run" where nothing exists, and whether the full scale confirms the proxy."""
    from jaxfno.report.seeds import matrix_section
    from jaxfno.report.statistics import wilson_interval

    def cell(collapsed, n, seeds, p=None, epochs=20):
        return {"n": n, "collapsed": collapsed, "p_collapse": collapsed / n, "seeds": seeds, "epochs": [epochs] * n,
                "p_collapse_wilson95": list(wilson_interval(collapsed, n)), "fisher_p_vs_stable": p,
                "median_steps_to_divergence": 700.0 if collapsed else None}

    # `fidelity` links three of `seeds_cpu`'s four `stable` runs: that cell is not shown again
    cpu = {"stable@asrun": cell(2, 4, [1, 2, 3, 4]), "stable_lowlr@asrun": cell(0, 3, [1, 2, 3], p=0.2)}
    levels = {"stable@asrun": {"lowest": [0.05], "at_event": [0.055, 0.06]},
              "stable_lowlr@asrun": {"lowest": [0.07, 0.08], "at_event": []}}
    fidelity = {"stable@asrun": cell(2, 3, [1, 2, 3]), "stable@fixed": cell(0, 2, [1, 2])}
    factorial = {"stable_lowlr@asrun": cell(0, 8, list(range(8)), p=0.01), "stable_warmup@fixed": cell(8, 8, [1])}
    # a seed of `seeds_cpu`'s trained twice as long is another run: shown, and no confirmation of the proxy
    longer = {"stable_lowlr@asrun": cell(3, 3, [1, 2, 3], epochs=40)}
    rows = [line for line in matrix_section([("full scale, cpu (`seeds_cpu`)", "cpu", cpu, levels),
                                             ("full scale, cpu (`fidelity`)", "cpu", fidelity, {})], factorial,
                                            longer=[("full scale, cpu, 40 epochs (`longer_cpu`)", "cpu", longer, {})])
            if line.startswith("| ") and not line.startswith("| arm")]
    assert len(rows) == 14  # 12 cells, one of them with two full-scale rows and a proxy row
    assert [r for r in rows if r.startswith("| stable | asrun")] == [
        "| stable | asrun | full scale, cpu (`seeds_cpu`) | 4 | 2/4 = 0.50 [0.15, 0.85] | – | step 700 | "
        "0.05 (0.055–0.06) | – |"]
    assert "| stable | fixed | full scale, cpu (`fidelity`) | 2 | 0/2 = 0.00 [0.00, 0.66] | – | not reached |" in rows[3]
    lowlr = [r for r in rows if r.startswith("| stable_lowlr | asrun")]
    assert lowlr[0].endswith("| 0.2 | not reached | 0.07–0.08 (0.055–0.06) | – |")
    assert lowlr[1].startswith("| stable_lowlr | asrun | full scale, cpu, 40 epochs (`longer_cpu`) | 3 | 3/3")
    assert lowlr[2].startswith("| stable_lowlr | asrun | proxy (`factorial`) | 8 |") and lowlr[2].endswith("| yes |")
    assert [r for r in rows if r.startswith("| stable_warmup | fixed")][0].endswith("| not run at full scale |")
    assert "| control | asrun | not run | – |" in rows[0]  # stable collapsed in asrun: no reason given
    assert "| control | fixed | not run: `stable` has not collapsed here (0/2, full scale, cpu (`fidelity`)) | – |" in rows[1]


def test_exposure_counts_short_batches_at_the_level_before_the_first_event(tmp_path):
    """Short batches (each epoch's last step) at or below the level, from the one before the
    start up to the first event at or after it; an earlier event is the source's."""
    from jaxfno.pipeline import RunResult
    from jaxfno.report.exposure import (Exposure, Group, exposure, exposure_section, exposure_sentence,
                                        no_event_chance, none_p, runs_needed)

    _branch(tmp_path, "run", [], "diverged", [200], steps=60, source=True)
    losses = [0.3] * 60 + [0.1] * 180  # epoch ends at steps 59, 119, 179, 239
    write_json(tmp_path / "run" / "history.json", {"val_loss": [0.1] * 4, "epoch_steps": [60] * 4,
                                                   "step_loss": losses, "lr": [1e-3] * 240})
    run = RunResult.load(tmp_path / "run")
    assert exposure(run, 0.1).short_batches == 2 and exposure(run, 0.1).event  # steps 119, 179; 59 is above
    assert exposure(run, 0.09).short_batches == 0  # never that low
    assert (exposure(run, 0.1, start=180).short_batches, exposure(run, 0.1, start=180).event) == (1, True)
    late = exposure(run, 0.1, start=230)  # the event at 200 began before the short batch at 229
    assert (late.short_batches, late.event, late.at_branch_point) == (1, False, False)  # 239, after the start
    assert exposure(run, 0.1, start=180).at_branch_point is True  # 179, just before the start: the source's
    assert exposure(run, 0.1).at_branch_point is False  # a run from its seed has no branch point
    no_short = RunResult(run.run_dir, run.config.with_overrides(["train.drop_last=true"]), run.history,
                         run.metrics, run.stats, run.verdict)
    assert exposure(no_short, 0.1) == Exposure(0, True, short=False)

    stable = Group("`seeds`", "stable", "asrun", "cpu", (exposure(run, 0.1),) * 2)  # 4 short batches, 2 events
    remedy = Group("branches", "optim.lr=0.00025", "asrun", "cpu", (late,) * 3)
    untested = Group("`seeds`", "stable_lowlr", "asrun", "cpu", (exposure(run, 0.09),))
    dropped = Group("`seeds`", "stable", "asrun_drop_last", "cpu", (exposure(no_short, 0.1),))
    rows = [line for line in exposure_section([stable, remedy, untested, dropped], 0.1) if line.startswith("| ")]
    assert rows[1] == "| `seeds` | stable | asrun | cpu | 2 | 4 (2) | 2 | 0.5 | – |"
    assert rows[2] == "| branches | optim.lr=0.00025 | asrun | cpu | 3 | 3 (1) | 0 | 0 | 0.12 |"
    assert remedy.own_short_batches == 3  # none of them just before the branch point
    # (1 − 0.5)^m < 0.05 from m = 5 short batches: 2 more runs at 1 per run
    assert runs_needed(remedy, [stable, remedy]) == 2 and runs_needed(stable, [stable, remedy]) is None
    assert runs_needed(Group("branches", "x", "asrun", "cpu", (late,) * 5), [stable]) is None  # chance 0.03
    calm = Group("`seeds`", "stable", "asrun", "cpu", (Exposure(3, False),))  # `stable` without an event
    assert runs_needed(remedy, [calm, remedy]) is None
    assert late.lrs == (1e-3,) and remedy.own_lrs == [1e-3] * 3
    assert no_event_chance(remedy, [stable, remedy], own=True) == no_event_chance(remedy, [stable, remedy])
    assert rows[3].endswith("| 0 (0) | 1 | – | untested: none taken |")  # its event came from higher up
    assert rows[4].endswith("| 0 (0) | 1 | – | no short batch |")
    assert none_p(0.5, 3) == pytest.approx(0.125)
    # a proxy candidate's `stable` is held against full scale's rate, never taken for the reference
    proxy = Group("`calibration/p`", "stable", "asrun", "cpu", (late,), "p")
    text = exposure_sentence([proxy, stable, remedy], 0.1)
    assert "`stable` on cpu took 4 and 2 first events followed (0.5 per short batch)" in text
    assert ("`stable` at proxy scale `p` in `asrun` (cpu) took 1 with 0 first events (the chance of no event in "
            "that many short batches at `stable`'s per-short-batch rate on that machine: 0.5)") in text
    # without the batch gain (`fixed`) the same rate asks another question, and the sentence says so
    fixed = Group("`fidelity`", "stable", "fixed", "cpu", (late,))
    assert ("`stable` in `fixed` (cpu) took 1 with 0 first events (the chance of no event in that many short "
            "batches at `stable`'s per-short-batch rate on that machine: 0.5; without the batch gain its short "
            "batch is no kick, so this asks whether the level alone sets a divergence off)") in \
        exposure_sentence([fixed, stable, remedy], 0.1)
    assert "no kick" not in text


def test_bottom_line_says_which_remedies_were_exposed():
    from jaxfno.report.exposure import Exposure, Group
    from jaxfno.report.findings import bottom_line

    def cell(arm, collapsed, n, p=None):
        return {"arm": arm, "condition": "asrun", "collapsed": collapsed, "n": n, "fisher_p_vs_stable": p,
                "epochs": [20], "seeds": list(range(n))}

    cpu = {"stable@asrun": cell("stable", 2, 3), "stable_warmup@asrun": cell("stable_warmup", 0, 3, 0.2)}
    gpu = {"stable@asrun": cell("stable", 4, 6), "stable_lowlr@asrun": cell("stable_lowlr", 0, 6, 0.03),
           "stable_warmup@asrun": cell("stable_warmup", 0, 6, 0.03)}  # tested on the cpu only
    exposed = [Group("`seeds_cpu`", "stable", "asrun", "cpu", (Exposure(2, True), Exposure(2, True))),
               Group("`seeds_cpu`", "stable_warmup", "asrun", "cpu", (Exposure(2, False),)),
               Group("`seeds_h200`", "stable_lowlr", "asrun", "H200", (Exposure(0, False),)),
               Group("`seeds_h200`", "stable_warmup", "asrun", "H200", (Exposure(0, False),)),
               Group("branches", "optim.lr=0.00025", "asrun", "cpu", (Exposure(4, False),))]
    branches = {"seed": {"n": 6, "collapsed": {"k": 6}, "event": {"k": 6}, "change": "nothing but the data order",
                         "sources": 1, "inherited": 0},
                "lr": {"n": 6, "collapsed": {"k": 0}, "event": {"k": 0}, "change": "optim.lr=0.00025", "inherited": 0},
                "clip": {"n": 6, "collapsed": {"k": 0}, "event": {"k": 3}, "change": "optim.grad_clip=0.5",
                         "inherited": 2}}
    fidelity = {"stable@asrun": cell("stable", 2, 3), "stable@fixed": {**cell("stable", 0, 2), "condition": "fixed"}}
    line = bottom_line([("cpu", cpu), ("H200", gpu)], exposed, branches, fidelity)
    assert line.startswith("In the one condition that collapsed in the fidelity check (`asrun`, full scale), "
                           "`stable` collapsed in 6/9 of its runs from seeds (2/3 on cpu, 4/6 on H200; 6 distinct "
                           "seeds, a seed on two machines counted on each, since rounding parts their trajectories).")
    assert ("; `stable_lowlr` on H200, `stable_warmup` on H200 never trained down to the loss at which `stable` "
            "diverged (no short batch taken there), so those seeds show fewer collapses within 20 epochs, not "
            "prevention. `stable_warmup` on cpu took 2 short batches at or below the highest loss at which a `stable` run from seeds diverged on any machine, "
            "with 0 first divergence events (at `stable`'s per-short-batch rate on that machine, the chance of none in "
            "that many: 0.25; too few short batches to tell prevention from delay: at the short batches per run "
            "taken so far, about 2 more runs without an event would bring that chance below 0.05).") in line
    assert ("those with optim.lr=0.00025 in 0/6 after 4 short batches at that loss, those with optim.grad_clip=0.5 "
            "in 0/6 (a divergence event in 3/6, 2 of them begun before the branch point, recovered from).") in line
    assert line.endswith("Not yet run from seeds in `asrun`: `stable_warmup_lowlr`, `stable_warmup_clip`.")
    assert bottom_line([("cpu", {})], exposed, branches) is None


def test_revisions_sentence_names_a_folder_that_mixes_code_revisions(tmp_path):
    from jaxfno.io import read_json
    from jaxfno.report.seeds import revisions_sentence

    mixed, same = tmp_path / "mixed", tmp_path / "same"
    for folder, commits in ((mixed, {"stable": None, "stable_lowlr": "abcdef123"}), (same, {"stable": "1234567aa"})):
        for arm, commit in commits.items():
            for seed in (1, 2):
                _seed_run(folder, arm, seed, [], "healthy", [])
                if commit:
                    history = folder / "asrun" / arm / f"seed{seed}" / "history.json"
                    write_json(history, {**read_json(history), "execution": {"device": "cpu", "commit": commit}})
    assert revisions_sentence([same]) is None  # one revision: nothing to say
    assert revisions_sentence([mixed, same]).startswith(
        "Code revisions (runs per revision): `mixed`: stable unrecorded (2); stable_lowlr abcdef1 (2). ")


def test_a_run_is_read_once_until_its_files_change(tmp_path):
    from jaxfno.io import read_json
    from jaxfno.report.cells import load_run, runs

    _seed_run(tmp_path, "stable", 1, [], "healthy", [])
    run_dir = tmp_path / "asrun" / "stable" / "seed1"
    assert load_run(run_dir) is load_run(run_dir)  # the sections of FINDINGS.md share one read
    verdict = read_json(run_dir / "verdict.json")
    write_json(run_dir / "verdict.json", {**verdict, "outcome": "diverged"})  # an atomic rewrite
    assert load_run(run_dir).verdict["outcome"] == "diverged"
    assert [r.verdict["outcome"] for r in runs(tmp_path).values()] == ["diverged"]
    assert runs(tmp_path / "missing") == {}


def _seed_run(folder, arm, seed, sets, outcome, events, device=None, epochs=4):
    """A finished run from seeds with everything the study's summary reads."""
    from jaxfno.io import read_json

    _branch(folder / "asrun" / arm, f"seed{seed}", [f"train.seed={seed}", *sets], outcome, events, steps=60,
            epochs=epochs, source=True, trailing_median=0.3)
    run_dir = folder / "asrun" / arm / f"seed{seed}"
    verdict = read_json(run_dir / "verdict.json")
    verdict["outcome_details"]["time_to_divergence"] = {"step": events[0] if events else 240,
                                                        "epoch": 3, "observed": bool(events)}
    write_json(run_dir / "verdict.json", {**verdict, "rules": [], "collapsed": False})
    write_json(run_dir / "metrics.json", {"ssim": [0.5, 0.5], "mae": [0.1, 0.1]})
    write_json(run_dir / "stats.json", {name: 0.1 for name in ("amp_ssim", "floor_amp_ssim", "best_val_loss",
                                                              "final_val_loss", "phase_ssim", "amp_mae",
                                                              "phase_mae")})
    history = read_json(run_dir / "history.json")
    write_json(run_dir / "history.json", {**history, "grad_norm": [1.0] * len(history["step_loss"]),
                                          **({"execution": {"device": device}} if device else {})})


def test_architecture_sentence_sets_the_hybrid_control_beside_stable(tmp_path):
    """Upstream's "the collapse is architectural" meets the hybrid control only where both arms ran
    from the same seeds; the caveat says the control also clips."""
    from jaxfno.io import read_json
    from jaxfno.report.seeds import architecture_caveat, architecture_sentence

    def run(arm, seed, sets, outcome, events):
        _seed_run(folder, arm, seed, sets, outcome, events)

    folder = tmp_path / "seeds_cpu"
    for seed in (1, 2):
        run("stable", seed, [], "diverged", [230])
    assert architecture_sentence([folder]) is None  # no control yet
    run("control", 1, ["model.arch=hybrid", "optim.grad_clip=1.0"], "healthy", [])
    sentence = architecture_sentence([folder])
    assert ("At full scale, in `asrun` on unknown device (`seeds_cpu`) the hybrid `control` (hybrid generator, Adam 1e-3, norm "
            "clip 1.0) collapsed in 0/1 = 0.00 [0.00, 0.79] (outcomes: healthy 1), `stable` in 2/2 = 1.00 [0.34, 1.00] (for fewer "
            "collapses with the hybrid: one-sided Fisher p 0.333, paired by seed 0.5); the hybrid's lowest 100-step median training loss was "
            "0.1, against 0.3 just before `stable`'s divergence events") in sentence
    assert "never trained down" not in sentence
    history = read_json(folder / "asrun" / "control" / "seed1" / "history.json")
    write_json(folder / "asrun" / "control" / "seed1" / "history.json",
               {**history, "step_loss": [0.5] * len(history["step_loss"])})
    assert ("was 0.5, against 0.3 just before `stable`'s divergence events, so it never trained down to where "
            "`stable` diverged") in architecture_sentence([folder])
    assert "clip at 1.0" in architecture_caveat(True) and "not been run" in architecture_caveat(False)



REPORT_HEAD = ("| arm | condition | seeds | outcomes | P(collapse) [95 % Wilson] | Fisher p vs stable | best val |\n"
               "|---|---|---|---|---|---|---|\n")


def _report_only(folder, rows, device="NVIDIA H200 × 1", table=None):
    """A report-only folder as gpu_check.sh leaves it: an earlier table of another stage, then the factorial's."""
    folder.mkdir(parents=True)
    other = REPORT_HEAD + "| control | asrun | 1 | healthy 1 | 0/1 = 0.00 [0.00, 0.79] | – | 0.1 |\n"
    table = REPORT_HEAD + "".join(rows) if table is None else table
    (folder / "summary.md").write_text(f"# GPU check\n\n## arm_1seed\n\n{other}\n"
                                       f"## factorial (the runs finished so far)\n\n# Stage A\n\n{table}\nValues …\n")
    (folder / "report_provenance.md").write_text(f"# Provenance\n\n- devices the runs trained on: {device}\n")
    return folder


STABLE_ROW = "| stable | asrun | 3 | diverged 2, healthy 1 | 2/3 = 0.67 [0.21, 0.94] | – | 0.0700 ± 0.0010 |\n"
WARMUP_ROW = "| stable_warmup | asrun | 3 | healthy 3 | 0/3 = 0.00 [0.00, 0.56] | 0.1 | 0.0650 ± 0.0020 |\n"


def test_report_only_rows_are_quoted_apart_and_skip_cells_with_committed_runs(tmp_path):
    from jaxfno.report.report_only import read_reports, report_only_section, report_only_sentence

    folder = _report_only(tmp_path / "h200_report_only", [STABLE_ROW, WARMUP_ROW])
    committed = {("NVIDIA H200", "stable@asrun"), ("cpu", "stable_warmup@asrun")}
    reports = read_reports([folder], committed)  # the factorial's table, not the one before it
    assert [r["arm"] for r in reports[0].unretrieved] == ["stable_warmup"]  # `stable` has its runs on that device
    sentence = report_only_sentence(reports)
    assert "`stable_warmup` in `asrun` collapsed in 0/3 = 0.00 [0.00, 0.56]" in sentence
    assert "Fisher p 0.1" in sentence and "0.0650 ± 0.0020 against `stable`'s 0.0700 ± 0.0010" in sentence
    section = "\n".join(report_only_section(reports))
    assert "| stable_warmup | asrun | 3 | healthy 3 |" in section and "| stable | asrun |" not in section
    # once the runs are committed on that device, the report has nothing left to quote
    everything = committed | {("NVIDIA H200", "stable_warmup@asrun")}
    reports = read_reports([folder], everything)
    assert report_only_sentence(reports) is None and report_only_section(reports) == []


@pytest.mark.parametrize("table, device, message", [
    (REPORT_HEAD + "| stable_warmup | asrun | 3 | a | b | c |\n", "NVIDIA H200 × 1", "a row has 6 cells, the header 7"),
    (REPORT_HEAD, "NVIDIA H200 × 1", "no rows"),
    (REPORT_HEAD.splitlines()[0] + "\n" + WARMUP_ROW, "NVIDIA H200 × 1", "separator"),
    ("| arm | condition |\n|---|---|\n| stable | asrun |\n", "NVIDIA H200 × 1", "lacks the column"),
    ("no table here\n", "NVIDIA H200 × 1", "no table under"),
    (None, "NVIDIA H200 × 1, cpu × 1", "2 devices"),
])
def test_report_only_refuses_what_it_cannot_read(tmp_path, table, device, message):
    from jaxfno.report.report_only import read_reports

    folder = _report_only(tmp_path / "x_report_only", [WARMUP_ROW], device, table)
    with pytest.raises(ValueError, match=message):
        read_reports([folder], set())
    (folder / "report_provenance.md").write_text("# Provenance\n")
    with pytest.raises(ValueError, match="devices the runs trained on"):
        read_reports([folder], set())


def test_findings_quote_a_report_only_folder_apart_from_the_runs(tmp_path):
    from jaxfno.report.findings import write_findings

    seeds = tmp_path / "stage_a_full_asrun" / "seeds_h200"
    for seed in (1, 2, 3):
        _seed_run(seeds, "stable", seed, [], "diverged" if seed < 3 else "healthy", [230] if seed < 3 else [],
                  device="NVIDIA H200")
    _report_only(tmp_path / "stage_a_full_asrun" / "h200_report_only", [STABLE_ROW, WARMUP_ROW])
    text = write_findings(tmp_path, tmp_path / "FINDINGS.md")
    header, rest = text.split("## The answer so far")
    assert "except those quoted from a device's report of runs that did not come back" in header
    answer = rest.split("### Per remedy")[0]
    assert "**Reported, runs not retrieved (full scale).**" in answer and "`stable_warmup` in `asrun`" in answer
    # the committed `stable` runs are counted; the quoted remedy counts as not run everywhere else
    assert "Not yet run from seeds in `asrun`: `stable_warmup`" in answer
    assert "| stable_warmup | asrun | not run |" in text
    assert "| `seeds_h200` (NVIDIA H200) | stable | asrun | 3 |" in text
    assert "| `seeds_h200` (NVIDIA H200) | stable_warmup |" not in text
    assert "| stable | asrun | 3 |" not in text.split("runs not retrieved (`h200_report_only`)")[1]


def test_findings_set_runs_trained_beyond_the_recipe_apart(tmp_path):
    """A `longer_<machine>` folder (a remedy trained for more epochs, no `stable` beside it) is
    shown with its length, counted in the exposure, and tested against nothing."""
    from jaxfno.report.findings import write_findings

    full = tmp_path / "stage_a_full_asrun"
    for seed in (1, 2):
        _seed_run(full / "seeds_cpu", "stable", seed, [], "diverged" if seed == 1 else "healthy",
                  [230] if seed == 1 else [], device="cpu")
    _seed_run(full / "longer_cpu", "stable_lowlr", 1, ["optim.lr=0.00025", "train.epochs=8"], "healthy", [],
              device="cpu", epochs=8)
    text = write_findings(tmp_path, tmp_path / "FINDINGS.md")
    answer = text.split("### Per remedy")[0]
    assert ("**Trained beyond the recipe (full scale).** `stable_lowlr` in `asrun` trained for 8 epochs on cpu "
            "(`longer_cpu`, seed 1) collapsed in 0/1 = 0.00 [0.00, 0.79] (outcomes: healthy 1)") in answer
    assert "Trained beyond the recipe, `stable_lowlr` trained for 8 epochs in `asrun` (cpu) took " in answer
    assert "| stable_lowlr | asrun | full scale, cpu, 8 epochs (`longer_cpu`) | 1 | 0/1 = 0.00 [0.00, 0.79] | – |" in text
    assert "| `longer_cpu` (cpu, 8 epochs) | stable_lowlr | asrun | 1 |" in text
    assert "| `longer_cpu` | stable_lowlr (8 epochs) | asrun | cpu | 1 |" in text
    assert ("`stable_lowlr` trained for 8 epochs in `asrun` (cpu) took 8 with 0 first events (the chance of no event "
            "in that many short batches at `stable`'s per-short-batch rate on that machine: 0.29)") in answer
    assert ("took 8 short batches at the loss where `stable` diverged, with 0 first divergence events (1 run; the "
            "chance of none in that many at `stable`'s per-short-batch rate: 0.29, so weak evidence)") in answer  # `stable` in `seeds_cpu`: 1 event in 7 short batches
    # not a recipe-length remedy tested against `stable`, and not "not run" either
    assert "`stable_lowlr` collapsed in 0/1 on cpu" not in answer and "`stable_lowlr`, " not in answer
    assert "Not yet run from seeds in `asrun`: `stable_warmup`, `stable_warmup_lowlr`, `stable_warmup_clip`." in answer


def test_runs_trained_longer_meet_stable_trained_as_long_where_it_is_beside_them(tmp_path):
    from jaxfno.report.seeds import longer_sentence

    folder = tmp_path / "longer_h200"
    for seed in (1, 2, 3):
        _seed_run(folder, "stable", seed, ["train.epochs=8"], "diverged", [230], device="NVIDIA H200", epochs=8)
        _seed_run(folder, "stable_lowlr", seed, ["train.epochs=8", "optim.lr=0.00025"], "healthy", [],
                  device="NVIDIA H200", epochs=8)
    sentence = longer_sentence([folder], [], [0.3])
    assert ("`stable_lowlr` in `asrun` trained for 8 epochs on NVIDIA H200 (`longer_h200`, seeds 1, 2, 3) collapsed "
            "in 0/3 = 0.00 [0.00, 0.56] (outcomes: healthy 3) against `stable` trained as long in 3/3 = 1.00 "
            "[0.44, 1.00] (one-sided Fisher p 0.05,") in sentence
    assert sentence.endswith(".") and "Where no `stable` run" not in sentence
    assert longer_sentence([], [], [0.3]) is None


def test_runs_trained_longer_are_held_against_stable_trained_as_long_in_the_exposure():
    from jaxfno.report.exposure import Exposure, Group, exposure_sentence, none_p

    recipe = Group("`seeds_h200`", "stable", "asrun", "H200", (Exposure(10, True), Exposure(10, False)))  # 1 in 20
    long_stable = Group("`longer_h200`", "stable", "asrun", "H200", (Exposure(4, True), Exposure(4, True)), epochs=40)
    long_lowlr = Group("`longer_h200`", "stable_lowlr", "asrun", "H200", (Exposure(5, False),), epochs=40)
    alone = Group("`longer_cpu`", "stable_lowlr", "asrun", "H200", (Exposure(5, False),), epochs=40)
    text = exposure_sentence([recipe, long_stable, long_lowlr, alone], 0.06)
    assert text.count("`stable` on H200 took 20") == 1  # the recipe's `stable` is the machine's reference
    assert "`stable` trained for 40 epochs in `asrun` (H200) took 8 with 2 first events" in text
    assert (f"`stable_lowlr` trained for 40 epochs in `asrun` (H200) took 5 with 0 first events (the chance of no "
            f"event in that many short batches at `stable`'s per-short-batch rate (trained as long) on that machine: "
            f"{none_p(2 / 8, 5):.2g})") in text
    assert f"`stable`'s per-short-batch rate on that machine: {none_p(1 / 20, 5):.2g})" in text  # `longer_cpu`


def test_remedy_cells_pair_their_seeds_with_stables(tmp_path):
    """A seed fixes initialisation and data order in both arms: the sign test counts only the seeds
    both ran whose outcomes differ, beside Fisher's test of the two proportions."""
    from jaxfno.report.cells import cells, fisher_text
    from jaxfno.report.statistics import paired_sign_less

    folder = tmp_path / "seeds_cpu"
    for seed in (1, 2, 3, 4):
        _seed_run(folder, "stable", seed, [], "diverged" if seed < 4 else "healthy", [230] if seed < 4 else [])
    for seed in (1, 2, 3):  # seed 2 collapses in both arms: concordant, not counted by the sign test
        _seed_run(folder, "stable_lowlr", seed, ["optim.lr=0.00025"], "diverged" if seed == 2 else "healthy",
                  [230] if seed == 2 else [])
    c = cells(folder)["stable_lowlr@asrun"]
    assert c["pairs_vs_stable"] == 3
    assert c["paired_p_vs_stable"] == pytest.approx(paired_sign_less([(False, True), (True, True), (False, True)]))
    assert c["paired_p_vs_stable"] == pytest.approx(0.25) and c["fisher_p_vs_stable"] == pytest.approx(
        fisher_less(1, 3, 3, 4))
    assert fisher_text(c) == f"{c['fisher_p_vs_stable']:.3g} (paired by seed 0.25)"
    assert fisher_text(c, inline=True).endswith(", paired by seed 0.25")
    assert cells(folder)["stable@asrun"]["paired_p_vs_stable"] is None


def test_compare_figure_gives_a_group_one_colour_and_one_legend_entry():
    from jaxfno.report.compare import compare_figure

    def history(scale):
        return {"step_loss": [scale * v for v in (1.0, 0.5, 0.4, 0.3)], "grad_norm": [1.0, 2.0, 1.5, 1.2],
                "val_loss": [0.6, 0.4], "epoch_steps": [2, 2]}

    runs = {f"r{i}": history(1 + i) for i in range(3)}
    fig = compare_figure(runs, groups=["null", "null", "lr"])
    lines = fig.axes[0].get_lines()[:3]  # then the epoch-end markers
    assert [line.get_color() for line in lines] == ["C0", "C0", "C1"]
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == ["null", "lr"]
    ungrouped = compare_figure(runs)
    assert [t.get_text() for t in ungrouped.axes[0].get_legend().get_texts()] == ["r0", "r1", "r2"]
    with pytest.raises(ValueError, match="2 groups for 3 runs"):
        compare_figure(runs, groups=["null", "lr"])


def test_lr_plot_marks_each_runs_first_divergence_event_on_its_schedule():
    from types import SimpleNamespace

    from jaxfno.report.study import _curves, _first_event
    from jaxfno.study.runner import RunKey

    def run(lr, events):
        return SimpleNamespace(history={"lr": lr}, verdict={"outcome_details": {"events": events}})

    results = {RunKey("stable", 1, "asrun"): run([1e-3] * 6, [{"step": 3}, {"step": 5}]),
               RunKey("stable_warmup", 1, "asrun"): run([1e-4, 2e-4, 3e-4, 2e-4, 1e-4, 5e-5], [])}
    fig = _curves(results, "lr", lambda r: [("", r.history["lr"], "-")], start=0, marks=_first_event)
    marks = [line for line in fig.axes[0].get_lines() if line.get_marker() == "x"]
    assert [(list(m.get_xdata()), list(m.get_ydata())) for m in marks] == [([3], [1e-3])]  # the first event only
    assert list(fig.axes[0].get_lines()[0].get_xdata()) == list(range(6))  # 0-based steps
    assert "first divergence event" in [t.get_text() for t in fig.axes[0].get_legend().get_texts()]


def test_seeds_section_shows_where_in_a_schedule_the_runs_diverged(tmp_path):
    from jaxfno.report.seeds import seeds_section

    folder = tmp_path / "seeds_cpu"
    _seed_run(folder, "stable", 1, [], "diverged", [230], device="cpu")
    (folder / "report").mkdir()
    (folder / "report" / "lr.png").write_bytes(b"")
    link = f"`seeds_cpu`]({folder}/report/lr.png)"
    assert not any(link in line for line in seeds_section([folder], []))  # one constant LR: nothing to show
    _seed_run(folder, "stable_warmup", 1, ["optim.scheduler=warmup_cosine"], "healthy", [], device="cpu")
    assert any(line.startswith("![Learning rate applied at each step, each run's first divergence event marked, ")
               and line.endswith(link) for line in seeds_section([folder], []))
