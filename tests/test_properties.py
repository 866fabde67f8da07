"""Property-based tests (hypothesis) over the config space and the command line: every config
either validates, and then round-trips through JSON to the same hash and can be built (model
traced, optimiser and schedule made) without an error, or fails with one ConfigError line;
every command line either reaches the dataset with the config its flags name or fails with
one line, before anything is built or compiled."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import math
import os
import typing
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from jaxfno import cli
from jaxfno.config import ConfigError, RunConfig, parse_field

SECTIONS = RunConfig.sections()
# Modest in CI (the file runs in about 10 s); PROPERTY_EXAMPLES=2000 searches harder.
EXAMPLES = int(os.environ.get("PROPERTY_EXAMPLES", "60"))
FAST = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# --- strategies -----------------------------------------------------------------------------

EDGE_INTS = st.sampled_from([-1, 0, 1, 2, 7, 8, 64, 65, 2 ** 63 - 1, 2 ** 63])
EDGE_FLOATS = st.sampled_from([0.0, -0.0, -1.0, 1.0, 1e-12, 0.999, 1.5, 1e300, math.inf, -math.inf, math.nan])
WRONG_TYPES = st.sampled_from([None, True, "1", [1], {"a": 1}, 1.5])


def _plausible(hint, choices):
    """Values a user would write for a field of this type, most of them valid."""
    if choices:
        return st.sampled_from(choices)
    if hint is bool:
        return st.booleans()
    if hint is int:
        return st.integers(0, 24)
    if hint is float:
        return st.sampled_from([1e-4, 1e-3, 0.01, 0.05, 0.1, 0.5, 0.9, 0.999, 1.0, 1e9])
    if hint is str:
        return st.sampled_from(["synthetic", "gaussian", "probe.npz"])
    return st.one_of(st.none(), st.integers(1, 64))  # Optional[int]


def _value(hint, choices):
    edge = {int: EDGE_INTS, float: EDGE_FLOATS, str: st.text(max_size=4)}.get(hint, st.nothing())
    return st.one_of(_plausible(hint, choices), _plausible(hint, choices), edge, WRONG_TYPES)


def _section(cls, value=_value):
    hints = typing.get_type_hints(cls)
    optional = {f.name: value(hints[f.name], f.metadata.get("choices")) for f in dataclasses.fields(cls)}
    return st.fixed_dictionaries({}, optional=optional)


RAW_CONFIGS = st.fixed_dictionaries({}, optional={name: _section(cls) for name, cls in SECTIONS.items()})


SMALL_CONFIGS = st.fixed_dictionaries({
    "model": st.fixed_dictionaries({
        "arch": st.sampled_from(["hybrid", "stable_hybrid", "fno"]),
        "spectral": st.sampled_from(["upstream", "symmetric"]),
        "width": st.integers(1, 3), "blocks": st.integers(1, 8), "modes": st.integers(1, 40),
        "max_hidden_channels": st.one_of(st.none(), st.integers(1, 4)),
    }),
    "optim": _section(SECTIONS["optim"], _plausible),
    "train": _section(SECTIONS["train"], _plausible),
})


def _assert_one_line(message: str) -> None:
    assert message.strip() and "\n" not in message.strip() and "Traceback" not in message, message


# --- the config space -----------------------------------------------------------------------


@FAST
@given(RAW_CONFIGS)
def test_any_config_validates_and_round_trips_or_fails_with_one_line(raw):
    try:
        cfg = RunConfig.from_dict(raw)
    except ConfigError as err:
        _assert_one_line(str(err))
        return
    text = cfg.to_json()
    again = RunConfig.from_json(text)
    assert again == cfg and again.config_hash() == cfg.config_hash()
    assert again.to_json() == text
    # The hash is the canonical JSON's: a reordered copy of the same dict hashes the same.
    assert RunConfig.from_dict(json.loads(text, object_pairs_hook=lambda p: dict(reversed(p)))).config_hash() \
        == cfg.config_hash()


@settings(max_examples=max(EXAMPLES // 3, 10), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(SMALL_CONFIGS)
def test_every_valid_config_builds_without_compiling(raw):
    """What validation lets through, the model, optimiser, schedule and batching accept: the
    model is traced abstractly (no compile) on the patch shape, and every epoch has a step."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from jaxfno.models import build_model
    from jaxfno.training.optim import build_transforms, scheduled_lr

    try:
        cfg = RunConfig.from_dict(raw)
    except ConfigError as err:
        _assert_one_line(str(err))
        return
    graphdef, state = nnx.split(nnx.eval_shape(lambda: build_model(cfg.model, 0)))
    x = jax.ShapeDtypeStruct((2, cfg.data.n, cfg.data.n, cfg.model.in_channels), jnp.float32)
    out = jax.eval_shape(lambda s, x: nnx.merge(graphdef, s)(x), state, x)
    assert jax.tree.leaves(out)[0].shape == (2, cfg.data.n, cfg.data.n, 2)
    build_transforms(cfg.optim)
    lrs = [scheduled_lr(cfg.optim, cfg.train.epochs, e) for e in range(cfg.train.trained_epochs)]
    assert all(math.isfinite(lr) and lr >= 0 for lr in lrs)
    n_train = cfg.train.train_subset or cfg.data.n_train_patterns
    steps = n_train // cfg.train.batch_size if cfg.train.drop_last else -(-n_train // cfg.train.batch_size)
    assert steps >= 1


def test_object_size_is_the_benchmarks():
    from jaxfno.config import OBJECT_SIZE
    from jaxfno.data.lines import OBJECT_SIZE as simulated
    from jaxfno.data.simulate import n_positions

    assert OBJECT_SIZE == simulated
    assert RunConfig().data.n_train_patterns == n_positions(4) ** 2 == 6889


# --- the command line -----------------------------------------------------------------------


class Reached(Exception):
    """Raised where ``jaxfno train`` would load the dataset: the config was accepted."""


FLAG_FIELDS = [(section, f, typing.get_type_hints(cls)[f.name]) for section, cls in SECTIONS.items()
               for f in dataclasses.fields(cls) if f.metadata.get("flag", True)]


def _text(hint, choices):
    """How a value is written on a command line: plausible or not."""
    plausible = _plausible(hint, choices).map(lambda v: "none" if v is None else json.dumps(v))
    return st.one_of(plausible, plausible, EDGE_INTS.map(str), EDGE_FLOATS.map(repr),
                     st.text(st.characters(codec="ascii", exclude_characters="\x00"), max_size=4))


ALL_FIELDS = [(section, f, typing.get_type_hints(cls)[f.name]) for section, cls in SECTIONS.items()
              for f in dataclasses.fields(cls)]
SET_ITEMS = st.one_of(
    st.sampled_from(ALL_FIELDS).flatmap(
        lambda t: _text(t[2], t[1].metadata.get("choices")).map(lambda text: f"{t[0]}.{t[1].name}={text}")),
    st.sampled_from(["optim.lr", "optim=1", "optim.learning_rate=1", "solver.lr=1", "=", ".lr=1",
                     "model.in_channels=2", "train.stop_after=3", "model.max_hidden_channels=null"]),
)


@st.composite
def train_argv(draw):
    """(argv, {(section, field): text}) for a random subset of the train flags."""
    chosen = draw(st.lists(st.sampled_from(FLAG_FIELDS), max_size=6, unique_by=lambda t: (t[0], t[1].name)))
    argv, given = [], {}
    for section, f, hint in chosen:
        flag = "--" + f.name.replace("_", "-")
        if hint is bool:
            value = draw(st.booleans())
            argv.append(flag if value else "--no-" + flag[2:])
            given[(section, f.name)] = json.dumps(value)
        else:
            text = draw(_text(hint, f.metadata.get("choices")))
            argv.append(f"{flag}={text}")
            given[(section, f.name)] = text
    return argv, given


def _run_train(argv, tmp_path):
    """(outcome, exit code, stderr) of ``jaxfno train`` stopped where the dataset is loaded."""
    err = io.StringIO()
    out = tmp_path / "never"
    with mock.patch("jaxfno.cli.runs.load_or_build_dataset", side_effect=Reached), \
            contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = cli.main(["train", "--out", str(out), *argv])
        except Reached:
            return "reached", None, err.getvalue()
        except SystemExit as exit_:
            code = exit_.code
    assert not out.exists()
    return "refused", code, err.getvalue()


def _expected(given: dict, sets: list[str]) -> RunConfig:
    """The config a command line names, built independently of the parser: the flags' values,
    then the --set items (the last of one field wins), validated once; ConfigError if none."""
    raw = {name: dict(dataclasses.asdict(cls())) for name, cls in SECTIONS.items()}
    for (section, name), text in given.items():
        raw[section][name] = parse_field(SECTIONS[section], name, text)
    for item in sets:
        key, sep, text = item.partition("=")
        section, _, name = key.partition(".")
        if not (sep and section in SECTIONS and name in raw[section]) or (section, name) in given:
            raise ConfigError(item)
        raw[section][name] = parse_field(SECTIONS[section], name, text)
    return cli._absolute_probe(RunConfig.from_dict(raw))


@FAST
@given(train_argv(), st.lists(SET_ITEMS, max_size=2))
def test_train_flags_name_the_config_or_fail_in_one_line(tmp_path_factory, case, sets):
    argv, given = case
    argv = argv + [arg for item in sets for arg in ("--set", item)]
    outcome, code, stderr = _run_train(argv, tmp_path_factory.mktemp("cli"))
    try:
        expected = _expected(given, sets)
    except ConfigError:
        assert outcome == "refused" and code == 2, (argv, stderr)
        _assert_one_line(stderr)
        return
    assert outcome == "reached", (argv, stderr)
    cfg = cli.run_config_from_args(cli.build_parser().parse_args(["train", "--out", "x", *argv]))
    assert cfg == expected and cfg.config_hash() == expected.config_hash()
    assert RunConfig.from_json(cfg.to_json()).config_hash() == cfg.config_hash()


@FAST
@given(st.lists(SET_ITEMS, max_size=4))
def test_train_set_names_the_config_or_fails_in_one_line(tmp_path_factory, sets):
    argv = [arg for item in sets for arg in ("--set", item)]
    outcome, code, stderr = _run_train(argv, tmp_path_factory.mktemp("cli"))
    try:
        expected = cli._absolute_probe(RunConfig().with_overrides(sets))
    except ConfigError:
        assert outcome == "refused" and code == 2, (sets, stderr)
        _assert_one_line(stderr)
        assert stderr.startswith("jaxfno: invalid configuration: ")
        return
    assert outcome == "reached", (sets, stderr)
    cfg = cli.run_config_from_args(cli.build_parser().parse_args(["train", "--out", "x", *argv]))
    assert cfg == expected and RunConfig.from_json(cfg.to_json()).config_hash() == cfg.config_hash()


@pytest.mark.parametrize("section", list(SECTIONS))
def test_every_field_has_help_and_a_flag_or_says_why_not(section):
    for f in dataclasses.fields(SECTIONS[section]):
        assert f.metadata.get("help"), f"{section}.{f.name} has no help text"
    help_text = cli.build_parser()._subparsers._group_actions[0].choices["train"].format_help()
    for _, f, _ in (t for t in FLAG_FIELDS if t[0] == section):
        assert f"--{f.name.replace('_', '-')}" in help_text and f"[{section}.{f.name};" in help_text
