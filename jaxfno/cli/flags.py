"""Command-line flags derived from the config dataclasses (one flag per field, its help and
choices from the field's metadata) and ``--set SECTION.FIELD=VALUE``; one-line errors."""

from __future__ import annotations

import argparse
import dataclasses
import pathlib
import typing

from jaxfno.config import ConfigError, DataConfig, ModelConfig, RunConfig, parse_field
from jaxfno.execution import ExecutionConfig
from jaxfno.study.stage_a import SCALES, UNCALIBRATED_PROXY


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not a positive integer")
    return value


def _count(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} is negative")
    return value


def scale_name(text: str) -> str:
    """``--scale``: a scale of ``SCALES``; SPEC §7.3's ``proxy`` before one is calibrated says why not."""
    if text in SCALES:
        return text
    if text == "proxy":
        raise argparse.ArgumentTypeError(UNCALIBRATED_PROXY)
    raise argparse.ArgumentTypeError(f"invalid choice: {text!r} (choose from {', '.join(SCALES)})")


# --- flags derived from the config dataclasses ----------------------------------------------
#
# Every field of a config section is a flag: ``--FIELD-NAME`` (underscores as dashes), typed and
# with choices from the field's annotation and metadata, its help line from the metadata
# (``jaxfno.config.field``). A flag's value lands in the namespace as ``SECTION.FIELD`` only when
# given, so defaults live in the dataclasses alone. ``--set SECTION.FIELD=VALUE`` reaches every
# field, flag or not.

# Older names kept for committed scripts.


FLAG_ALIASES = {"data.noise_seed": ("--data-seed",), "model.max_hidden_channels": ("--cap",)}


class ArgumentParser(argparse.ArgumentParser):
    """argparse with one-line errors: ``jaxfno train: error: ... (see --help)``."""

    def error(self, message: str) -> typing.NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _flag_type(cls: type, name: str):
    def convert(text: str):
        try:
            return parse_field(cls, name, text)
        except ConfigError as err:
            raise argparse.ArgumentTypeError(str(err)) from None

    return convert


def add_config_flags(parser: argparse.ArgumentParser, cls: type, section: str,
                     aliases: dict[str, tuple[str, ...]] = FLAG_ALIASES) -> None:
    """One flag per field of the dataclass ``cls`` (a config section, e.g. ``ModelConfig`` as
    ``model``), in a help group of its own; read them back with :func:`config_from_args`.
    Field metadata: ``help`` (its help line), ``choices``, ``metavar``, ``flag=False`` (no
    flag). A bool field is ``--NAME/--no-NAME``; an optional one also takes ``none``."""
    doc = " ".join((cls.__doc__ or "").split()).split(". ")[0].rstrip(".") + "."
    group = parser.add_argument_group(f"{section} ({cls.__name__})", doc)
    parser.set_defaults(config_sections=(*(parser.get_default("config_sections") or ()), (section, cls)))
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if not f.metadata.get("flag", True):
            continue
        key = f"{section}.{f.name}"
        names = [f"--{f.name.replace('_', '-')}", *aliases.get(key, ())]
        default = "none" if f.default is None else f"{f.default:g}" if type(f.default) is float else f.default
        help_text = f"{f.metadata.get('help', f.name)} [{key}; default: {default}]".replace("%", "%%")
        kwargs: dict[str, typing.Any] = dict(dest=key, default=argparse.SUPPRESS, help=help_text)
        if hints[f.name] is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["type"] = _flag_type(cls, f.name)
            if "choices" in f.metadata:
                kwargs["choices"] = f.metadata["choices"]
            if "metavar" in f.metadata or "choices" not in f.metadata:
                kwargs["metavar"] = f.metadata.get("metavar", getattr(hints[f.name], "__name__", "VALUE").upper())
        group.add_argument(*names, **kwargs)


def given_fields(args: argparse.Namespace, section: str) -> dict[str, typing.Any]:
    """The fields of ``section`` given as flags on this command line."""
    prefix = section + "."
    return {key[len(prefix):]: value for key, value in vars(args).items() if key.startswith(prefix)}


def parse_set(item: str, sections: dict[str, type]) -> tuple[str, str, typing.Any]:
    """``SECTION.FIELD=VALUE`` → (section, field, value), ``sections`` naming the dataclass of
    each section; ConfigError (one line, naming the item) when malformed or mistyped."""
    key, sep, text = item.partition("=")
    section, _, name = key.partition(".")
    if not sep or not name:
        raise ConfigError(f"override {item!r} is not SECTION.FIELD=VALUE")
    if section not in sections:
        raise ConfigError(f"override {item!r}: no config section {section!r} (one of {', '.join(sections)})")
    if name not in {f.name for f in dataclasses.fields(sections[section])}:
        raise ConfigError(f"override {item!r}: {section} has no field {name!r}")
    try:
        return section, name, parse_field(sections[section], name, text)
    except ConfigError as err:
        raise ConfigError(f"override {item!r}: {section}.{err}") from None


def _flag_sections(args: argparse.Namespace) -> dict[str, type]:
    return dict(getattr(args, "config_sections", ()))


def config_from_args(args: argparse.Namespace, cls: type, section: str, base=None):
    """``base`` (default: ``cls()``) with the flags of ``section`` given on the command line
    and its ``--set SECTION.FIELD=VALUE`` items, in one change validated by the dataclass; a
    field given both ways is refused."""
    flags = given_fields(args, section)
    changes = dict(flags)
    for item in getattr(args, "set", None) or ():  # the last of repeated items wins
        if item.partition(".")[0] != section:
            continue
        _, name, value = parse_set(item, {section: cls})
        if name in flags:
            raise ConfigError(f"{section}.{name} given both by a flag and by --set")
        changes[name] = value
    return dataclasses.replace(base if base is not None else cls(), **changes)


def add_set_flag(parser: argparse.ArgumentParser, what: str = "the run's config") -> None:
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                        help=f"change one field of {what}, repeatable (e.g. optim.lr=5e-4, "
                             "train.drop_last=true, model.max_hidden_channels=null); reaches every field, "
                             "including those without a flag")


def run_config_from_args(a, base: RunConfig = RunConfig()) -> RunConfig:
    """``base`` with the flags given on the command line and the ``--set`` changes (a field
    given both ways is refused), validated once as a whole. ``--set`` items of another section
    with flags on this parser (e.g. ``execution``) are left to its :func:`config_from_args`."""
    sections = RunConfig.sections()
    for item in a.set:
        parse_set(item, {**_flag_sections(a), **sections})
    cfg = RunConfig(**{name: config_from_args(a, cls, name, getattr(base, name))
                       for name, cls in sections.items()})
    return _absolute_probe(cfg)


def _absolute_probe(cfg: RunConfig) -> RunConfig:
    """A probe file named relative to the working directory, as an absolute path."""
    return cfg.replace(data=_absolute_probe_data(cfg.data))


def _absolute_probe_data(data: DataConfig) -> DataConfig:
    if data.probe in DataConfig.PROBES:
        return data
    return data.replace(probe=str(pathlib.Path(data.probe).absolute()))


def _data_config(a) -> DataConfig:
    return _absolute_probe_data(config_from_args(a, DataConfig, "data"))


def _model_config(a) -> ModelConfig:
    return config_from_args(a, ModelConfig, "model")


def add_run_flags(p: argparse.ArgumentParser) -> None:
    """A flag for every field of every section of :class:`RunConfig` and of the execution
    config, and ``--set``."""
    for name, cls in RunConfig.sections().items():
        add_config_flags(p, cls, name)
    add_config_flags(p, ExecutionConfig, "execution")
    add_set_flag(p)


def execution_from_args(a) -> ExecutionConfig:
    """How the command's programs execute: the execution flags and ``--set execution.*``."""
    return config_from_args(a, ExecutionConfig, "execution")


# jaxfno.training.checkpoint.KINDS, spelled out so that parsing imports no Orbax (a test checks).
CHECKPOINT_KINDS = ("last", "best", "epochs")


def _add_keep_epochs(p: argparse.ArgumentParser) -> None:
    p.add_argument("--keep-epochs-from", type=_count, default=0, metavar="E",
                   help="keep the state after every epoch from epoch E (1-based) on, in "
                        "checkpoints/epochs/<epoch-1>, to branch or inspect there later (0: none; "
                        "a full-scale state is ≈ 230 MB)")


def _add_process_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("multi-process job (all three, in every process; see README)")
    g.add_argument("--coordinator", metavar="HOST:PORT", help="process 0's address")
    g.add_argument("--num-processes", type=_positive_int, help="how many processes join")
    g.add_argument("--process-id", type=int, help="this process's index, 0 … N-1")


def _join_processes(a) -> None:
    given = [a.coordinator is not None, a.num_processes is not None, a.process_id is not None]
    if any(given) and not all(given):
        raise ConfigError("--coordinator, --num-processes and --process-id go together")
    if all(given):
        from jaxfno.processes import initialize_processes

        initialize_processes(a.coordinator, a.num_processes, a.process_id)
