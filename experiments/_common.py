"""What every experiment shares: flags from its config, results files, runs.

An experiment module is a frozen config dataclass (on `TrainingOptions` or
`SeedOptions` where it trains), one `run(config, workdir) -> results` that
calls the library, and

    define_flags, main = _common.entry_points(Config, run, "my_study")

    if __name__ == "__main__":
      _common.launch(main, define_flags)

`define_flags` registers one absl flag per config field, named as the field,
typed from its annotation, with the help text of its line under
"Attributes:" in the docstrings, plus `--workdir`. The flags are checked
together by constructing the config at parse time, so a bad value is an
absl flag error naming the flag before anything trains. The shared options
are declared and checked here once; `config.train_config(**overrides)` is
the `TrainConfig` of a study's runs.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import logging as std_logging
import os
import pathlib
import re
import sys
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from absl import app, flags, logging

from equivlab import checks
from equivlab.training import checkpoint, sweeps
from equivlab.training.config import check_checkpoint_cadence

# Default workdirs live under ./runs (git-ignored), so no folder named
# after the package appears in a directory Python may start from.
RUNS_DIR = pathlib.Path("runs")
_QUIET_PACKAGES = ("orbax",)


# ---------------------------------------------------------------------------
# Settings every experiment that trains shares.
# ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TrainingOptions:
  """The settings every experiment that trains through the engine shares.

  A study re-declares a field to change its default; the checks here hold
  for every study (`check_config`), and `train_config` turns the settings
  into the `equivlab.train.TrainConfig` its runs start from.

  Attributes:
    dataset: "embedded" (the 5,000 embedded MNIST digits, no network) or a
      tensorflow-datasets name such as "mnist" (prepared beforehand: see
      --download and --data_dir).
    data_dir: the tfds data directory where the data set is prepared
      (default: $TFDS_DATA_DIR or ~/tensorflow_datasets).
    download: let tfds download and prepare a missing data set (needs
      internet and the tf extra).
    num_devices: devices of the data-parallel mesh (default: all).
    checkpoint_every_steps: also checkpoint every this many steps (runs
      always checkpoint at every epoch end).
    checkpoint_every_secs: also checkpoint when this many seconds have
      passed since the last checkpoint.
    progress: show progress bars.
    num_epochs: training epochs per run.
    batch_size: training batch size.
    learning_rate: the optimizer's peak learning rate, > 0.
    train_limit: use only this many training digits (default: all).
    test_limit: use only this many test digits (default: all).
    seed: seed of the runs (initialisation, data order, dropout).
  """

  dataset: str = "embedded"
  data_dir: str | None = None
  download: bool = False
  num_devices: int | None = None
  checkpoint_every_steps: int | None = None
  checkpoint_every_secs: float | None = 300.0
  progress: bool = True
  num_epochs: int = 3
  batch_size: int = 64
  learning_rate: float = 3e-3
  train_limit: int | None = None
  test_limit: int | None = None
  seed: int = 0

  def train_options(self) -> dict[str, Any]:
    """Where data come from and how runs are kept, as `TrainConfig` fields:
    the first seven fields, the ones a study passes on unchanged."""
    fields = dataclasses.fields(TrainingOptions)[:7]
    return {f.name: getattr(self, f.name) for f in fields}

  def train_config(self, **overrides: Any) -> Any:
    """The `TrainConfig` of all these settings, `overrides` replacing some.

    Raises:
      ValueError / TypeError: for a bad override, naming the field.
    """
    from equivlab import train  # noqa: PLC0415 (jax and flax are slow)

    names = [f.name for f in dataclasses.fields(TrainingOptions)]
    shared = {name: getattr(self, name) for name in names}
    return train.TrainConfig.from_fields(shared, **overrides)

  def test_digits(self, name: str | None = None) -> tuple[Any, Any]:
    """The "test" split of `name` (default `dataset`), cut to test_limit.

    Raises:
      FileNotFoundError: if a tfds data set is not prepared.
    """
    from equivlab import data  # noqa: PLC0415

    name, limit = name or self.dataset, self.test_limit
    split = data.load_dataset(
      name, "test", data_dir=self.data_dir, download=self.download
    )
    return split[0][:limit], split[1][:limit]


@dataclasses.dataclass(frozen=True)
class SeedOptions:
  """The seeds of a study that repeats every run over several seeds.

  Attributes:
    num_seeds: how many seeds each run is repeated with.
    seed: the first seed; the runs use seed, seed + 1, ...
  """

  num_seeds: int = 3
  seed: int = 0

  @property
  def seeds(self) -> tuple[int, ...]:
    """`(seed, seed + 1, ..., seed + num_seeds - 1)`."""
    return tuple(range(self.seed, self.seed + self.num_seeds))


def check_config(config: Any) -> None:
  """Checks the shared fields of an experiment config, where it has them.

  The fields of `TrainingOptions` and `SeedOptions`, and those of the same
  names in any other experiment's config (`num_epochs`, `batch_size`,
  `learning_rate`, `seed`, the checkpoint cadence, ...), mean the same
  thing everywhere and are checked here once.

  Raises:
    ValueError / TypeError: naming the first bad field.
  """
  present = lambda name: hasattr(config, name)  # noqa: E731
  if present("dataset") and (
    not isinstance(config.dataset, str) or not config.dataset
  ):
    raise ValueError(
      f"dataset must be a non-empty name, got {config.dataset!r}."
    )
  for name in filter(present, ("num_seeds", "num_epochs", "batch_size")):
    checks.check_int(name, getattr(config, name), minimum=1)
  for name in filter(present, ("num_devices", "train_limit", "test_limit")):
    checks.check_int(name, getattr(config, name), minimum=1, allow_none=True)
  if present("learning_rate"):
    checks.check_number(
      "learning_rate", config.learning_rate, minimum=0, strict_minimum=True
    )
  if present("seed"):
    checks.check_int("seed", config.seed, minimum=0)
  if present("checkpoint_every_secs"):
    check_checkpoint_cadence(config)


def check_names(
  name: str, values: Any, known: Sequence[str], *, minimum: int = 1
) -> None:
  """`values` must be distinct names from `known`, at least `minimum`.

  Raises:
    TypeError: if `values` is not a sequence of names.
    ValueError: naming the unknown or repeated ones.
  """
  if isinstance(values, str) or not isinstance(values, tuple | list):
    raise TypeError(f"{name} must be a sequence of names, got {values!r}.")
  unknown = [v for v in values if v not in known]
  if len(values) < minimum or unknown or len(set(values)) < len(values):
    raise ValueError(
      f"{name} must be distinct names from {tuple(known)}, at least "
      f"{minimum}, got {tuple(values)}"
      + (f" (unknown: {unknown})." if unknown else ".")
    )


# ---------------------------------------------------------------------------
# Flags from a config dataclass.
# ---------------------------------------------------------------------------


def field_help(config_cls: type) -> dict[str, str]:
  """Field name -> its text under "Attributes:" in the class docstrings."""
  found: dict[str, str] = {}
  for cls in reversed(config_cls.__mro__):
    section = inspect.cleandoc(cls.__doc__ or "").partition("Attributes:")[2]
    name = None
    for line in section.splitlines():
      entry = re.match(r"^  (\w+): (.*)$", line)
      if entry:
        name, found[entry.group(1)] = entry.group(1), entry.group(2).strip()
      elif line.startswith("    ") and name:
        found[name] += " " + line.strip()
      elif line.strip():
        name = None
  return found


def _flag_kind(hint: Any) -> tuple[str, type | None]:
  """("int"|"float"|"bool"|"str"|"list"|"json", element type) of a type."""
  if typing.get_origin(hint) in (typing.Union, types.UnionType):
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    hint = args[0] if len(args) == 1 else str
  if typing.get_origin(hint) in (tuple, Sequence, list):
    return "list", (typing.get_args(hint) or (str,))[0]
  kinds = {bool: "bool", int: "int", float: "float", str: "str"}
  return kinds.get(hint, "json"), None


def _convert(name: str, value: Any, kind: str, element: Any) -> Any:
  """A parsed flag value as the config field wants it."""
  if value is None or kind not in ("list", "json"):
    return value
  if kind == "list":
    try:
      return tuple(element(v) for v in value)
    except (TypeError, ValueError):
      raise ValueError(
        f"--{name} must be a comma-separated list of {element.__name__}s, "
        f"got {','.join(map(str, value))!r}."
      ) from None
  try:
    return json.loads(value) if isinstance(value, str) else value
  except json.JSONDecodeError as error:
    raise ValueError(
      f'--{name} must be JSON, e.g. \'{{"norm": "batch"}}\', got '
      f"{value!r} ({error.msg})."
    ) from None


def _make_config(config_cls: type, values: Mapping[str, Any]) -> Any:
  hints = typing.get_type_hints(config_cls)
  return config_cls(
    **{
      f.name: _convert(f.name, values[f.name], *_flag_kind(hints[f.name]))
      for f in dataclasses.fields(config_cls)
      if f.name in values
    }
  )


@dataclasses.dataclass
class Flags:
  """An experiment's flag holders, with the config they describe.

  Attributes:
    config_cls: the experiment's config dataclass.
    holders: flag name -> absl `FlagHolder`.
  """

  config_cls: type
  holders: dict[str, Any]

  def config(self) -> Any:
    """The config the parsed flags describe."""
    values = {name: h.value for name, h in self.holders.items()}
    return _make_config(self.config_cls, values)

  @property
  def workdir(self) -> str:
    """The value of --workdir."""
    return self.holders["workdir"].value


_DEFINE = {
  "bool": flags.DEFINE_boolean,
  "int": flags.DEFINE_integer,
  "float": flags.DEFINE_float,
  "str": flags.DEFINE_string,
  "list": flags.DEFINE_list,
  "json": flags.DEFINE_string,
}


def define_flags(
  config_cls: type,
  flag_values: flags.FlagValues = flags.FLAGS,
  *,
  workdir: str,
) -> Flags:
  """Registers one flag per field of `config_cls`, and --workdir.

  Called only when an experiment runs as a script (and by tests, with a
  fresh `flags.FlagValues()`), so that importing several experiments into
  one process never defines a flag twice. Each flag's validator builds the
  config of all the flags and blames a failure whose message starts with
  the field's name on that flag; a multi-flag validator catches the rest.

  Args:
    config_cls: a frozen dataclass whose fields all have defaults and
      whose docstring documents each under "Attributes:".
    flag_values: where to register them.
    workdir: the default of --workdir.

  Returns:
    The holders, with `.config()` and `.workdir`.
  """
  helps, hints = field_help(config_cls), typing.get_type_hints(config_cls)
  holders = {
    "workdir": flags.DEFINE_string(
      "workdir",
      workdir,
      "Directory for results.json, the tables, figures and per-run "
      "checkpoints (created if missing; a rerun resumes there).",
      flag_values=flag_values,
    )
  }
  defaults, names = (
    config_cls(),
    [f.name for f in dataclasses.fields(config_cls)],
  )
  for name in names:
    kind, _ = _flag_kind(hints[name])
    default = getattr(defaults, name)
    if kind == "list" and default is not None:
      default = [str(v) for v in default]
    elif kind == "json":
      default = json.dumps(default if not isinstance(default, tuple) else {})
    help_text = helps.get(name) or name.replace("_", " ")
    holders[name] = _DEFINE[kind](
      name, default, help_text, flag_values=flag_values
    )
    flags.register_validator(
      name,
      _validator(config_cls, name, names, flag_values),
      flag_values=flag_values,
    )
  flags.register_multi_flags_validator(
    names,
    _validator(config_cls, None, names, flag_values),
    flag_values=flag_values,
  )
  return Flags(config_cls, holders)


def _validator(config_cls, name, names, flag_values):
  """Validates --name (or, with name None, all flags together)."""

  def valid(value: Any) -> bool:
    values = value if name is None else {n: flag_values[n].value for n in names}
    if name is not None:
      values[name] = value
    try:
      _make_config(config_cls, values)
    except (TypeError, ValueError) as error:
      if name is None or re.match(rf"(--)?{name}\b", str(error)):
        raise flags.ValidationError(str(error)) from None
    return True

  return valid


def entry_points(
  config_cls: type,
  run: Callable[[Any, str], Any],
  name: str,
) -> tuple[Callable[..., Flags], Callable[[Sequence[str], Flags], None]]:
  """An experiment's `define_flags(flag_values)` and `main(argv, flags)`.

  Args:
    config_cls: the experiment's config dataclass.
    run: its `run(config, workdir)`.
    name: its name; the default workdir is `runs/<name>`.
  """

  def define(flag_values: flags.FlagValues = flags.FLAGS) -> Flags:
    return define_flags(config_cls, flag_values, workdir=str(RUNS_DIR / name))

  def main(argv: Sequence[str], holders: Flags) -> None:
    if len(argv) > 1:
      raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    run(holders.config(), holders.workdir)

  define.__doc__ = f"Registers the flags of {name}; returns their holders."
  main.__doc__ = f"Runs {name} with the parsed flags."
  return define, main


# ---------------------------------------------------------------------------
# The launcher.
# ---------------------------------------------------------------------------


class _BelowWarningFrom(std_logging.Filter):
  """Lets only one package's warnings pass, without tracebacks (equivlab
  reports the failure it raises in one line naming the path)."""

  def __init__(self, package: str):
    super().__init__()
    self._fragment = f"/{package}/"

  def filter(self, record: std_logging.LogRecord) -> bool:
    if self._fragment not in record.pathname.replace("\\", "/"):
      return True
    record.exc_info, record.exc_text, record.stack_info = None, None, None
    return std_logging.WARNING <= record.levelno < std_logging.ERROR


def quiet_library_logs(
  handler: std_logging.Handler | None = None,
  packages: Sequence[str] = _QUIET_PACKAGES,
) -> None:
  """Filters INFO and DEBUG records of `packages` out of a log handler.

  orbax logs hundreds of INFO records per run; its warnings still show.

  Args:
    handler: the handler to filter; absl's handler if None.
    packages: top-level package names whose chatter to drop.
  """
  handler = handler or logging.get_absl_handler()
  present = {type(f) for f in handler.filters}
  if _BelowWarningFrom in present:
    return
  for package in packages:
    handler.addFilter(_BelowWarningFrom(package))


# Errors whose message is the whole story for a command-line user: they say
# what to change. Anything else keeps its traceback (it is a bug).
USER_ERRORS = (ValueError, TypeError, OSError, FloatingPointError)


def use_compilation_cache() -> pathlib.Path | None:
  """Keeps compiled XLA programs on disk, for the runs that follow.

  The seeds of a study, and the next command, compile the very same steps.
  In `$JAX_COMPILATION_CACHE_DIR` if set, else `<equivlab's cache dir>/jax`
  (`equivlab.data.default_cache_dir`); `EQUIVLAB_JAX_CACHE=0` turns it off.

  Returns:
    The cache directory, or None when it is off.
  """
  import jax  # noqa: PLC0415 (the flags module need not import jax)

  from equivlab import data  # noqa: PLC0415

  if os.environ.get("EQUIVLAB_JAX_CACHE", "1") == "0":
    return None
  path = os.environ.get("JAX_COMPILATION_CACHE_DIR") or str(
    data.default_cache_dir() / "jax"
  )
  jax.config.update("jax_compilation_cache_dir", path)
  return pathlib.Path(path)


def launch(
  main: Callable[[Sequence[str], Flags], None],
  define_flags: Callable[[], Flags],
) -> None:
  """Registers the experiment's flags and runs `main(argv, flags)`.

  A user error (bad input, a file that cannot be written, a diverged run, a
  workdir in use) ends the command with its one-line message and exit
  status 1, not a traceback.
  """
  holders = define_flags()

  def _main(argv: Sequence[str]) -> None:
    quiet_library_logs()
    use_compilation_cache()
    # For the process's whole life: a failed checkpoint write may finish
    # its pending operations after equivlab has reported it.
    sys.unraisablehook = checkpoint.without_closed_loop_noise(
      sys.unraisablehook
    )
    try:
      main(argv, holders)
    except (*USER_ERRORS, RuntimeError) as error:
      is_user_error = isinstance(error, USER_ERRORS)
      if not is_user_error and type(error).__name__ != "WorkdirInUseError":
        raise
      logging.flush()
      print(f"error: {error}", file=sys.stderr)
      sys.exit(1)

  app.run(_main)


# ---------------------------------------------------------------------------
# Training runs.
# ---------------------------------------------------------------------------


def train_variants(
  config: TrainingOptions,
  variants: Mapping[str, Any],
  workdir: str | pathlib.Path,
  *,
  score: Callable[[str, int, Any], Any] | None = None,
  **overrides: Any,
) -> tuple[dict[str, list[Any]], dict[str, list[Any]], dict[str, list[float]]]:
  """`sweeps.train_grid` of `variants` from `config.train_config(**overrides)`.

  The seeds are `config.seeds` (or `(config.seed,)`). `score(name, seed,
  result)` runs in the worker thread as each run finishes, while the
  others train.

  Returns:
    `(results, records, seconds)`: name -> one `TrainResult` per seed,
    name -> one score per seed (empty without `score`), and name -> the
    wall time of each run.
  """
  seeds = getattr(config, "seeds", (config.seed,))
  done = {}

  def on_done(name, seed, result):
    done[name, seed] = score(name, seed, result)

  results, seconds = sweeps.train_grid(
    config.train_config(**overrides),
    variants,
    seeds,
    workdir,
    on_done=on_done if score else None,
  )
  records = {n: [done[n, s] for s in seeds] for n in results} if score else {}
  return results, records, seconds
