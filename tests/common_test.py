"""Tests of experiments/_common.py, what every experiment shares."""

import dataclasses
import logging
import os
import pathlib
import subprocess
import sys
import textwrap

import pytest
from absl import flags

from equivlab import checks
from experiments import _common

_REPO = pathlib.Path(__file__).resolve().parent.parent


@dataclasses.dataclass(frozen=True)
class _Config(_common.TrainingOptions, _common.SeedOptions):
  """A study.

  Attributes:
    depths: the depths to try, comma-separated.
    rate: a learning rate, > 0; its help goes on
      over two lines.
    name: a label.
    limit: an optional limit.
    kwargs: keyword arguments as JSON.
  """

  depths: tuple[int, ...] = (2, 4)
  rate: float = 0.1
  name: str = "x"
  limit: int | None = None
  kwargs: dict = dataclasses.field(default_factory=dict)

  def __post_init__(self):
    _common.check_config(self)
    checks.check_ints("depths", self.depths, minimum=1)
    checks.check_number("rate", self.rate, minimum=0, strict_minimum=True)


def _parse(*argv):
  flag_values = flags.FlagValues()
  holders = _common.define_flags(_Config, flag_values, workdir="runs/x")
  flag_values(["study", *argv])
  holders.flag_values = flag_values
  return holders


def test_flags_are_the_config_fields_with_their_help():
  holders = _parse()
  names = {f.name for f in dataclasses.fields(_Config)} | {"workdir"}
  assert set(holders.holders) == names
  helps = holders.flag_values
  assert helps["rate"].help == (
    "a learning rate, > 0; its help goes on over two lines."
  )
  assert "tensorflow-datasets" in helps["dataset"].help
  assert holders.config() == _Config()
  assert holders.workdir == "runs/x"


def test_flag_values_become_the_config():
  holders = _parse(
    "--depths=8,16",
    "--rate=0.5",
    "--limit=3",
    '--kwargs={"a": [1, 2]}',
    "--num_seeds=2",
    "--seed=4",
    "--nodownload",
    "--workdir=w",
  )
  config = holders.config()
  assert config.depths == (8, 16) and config.rate == 0.5
  assert config.limit == 3 and config.kwargs == {"a": [1, 2]}
  assert config.seeds == (4, 5) and holders.workdir == "w"


@pytest.mark.parametrize(
  ("argv", "message"),
  [
    (["--rate=0"], "flag --rate=0.0: rate must be a finite number > 0"),
    (["--depths=2,x"], "--depths must be a comma-separated list of ints"),
    (["--depths=0"], r"depths\[0\] must be an int >= 1, got 0"),
    (["--num_seeds=0"], "num_seeds must be an int >= 1, got 0"),
    (["--kwargs={a}"], "--kwargs must be JSON"),
    (["--checkpoint_every_secs=-1"], "checkpoint_every_secs must be"),
  ],
)
def test_bad_flags_are_flag_errors_naming_the_flag(argv, message):
  with pytest.raises(flags.IllegalFlagValueError, match=message):
    _parse(*argv)


def _record(path: str, level: int, exc_info=None) -> logging.LogRecord:
  return logging.LogRecord("absl", level, path, 1, "message", None, exc_info)


def test_orbax_chatter_and_tracebacks_are_dropped_but_warnings_pass():
  handler = logging.Handler()
  _common.quiet_library_logs(handler)
  _common.quiet_library_logs(handler)  # idempotent: one filter, not two.
  assert len(handler.filters) == 1
  orbax = "/venv/lib/python3.11/site-packages/orbax/checkpoint/manager.py"
  ours = "/repo/equivlab/training/loop.py"
  assert not handler.filter(_record(orbax, logging.INFO))
  assert not handler.filter(_record(orbax, logging.ERROR))
  warning = _record(orbax, logging.WARNING, (ValueError, ValueError(), None))
  assert handler.filter(warning) and warning.exc_info is None
  assert handler.filter(_record(ours, logging.INFO))
  assert handler.filter(_record(ours, logging.ERROR))


def test_launch_ends_a_user_error_in_one_line_with_status_1(tmp_path):
  script = tmp_path / "study.py"
  script.write_text(
    textwrap.dedent(
      """
      import dataclasses
      from experiments import _common

      @dataclasses.dataclass(frozen=True)
      class Config:
        '''S.

        Attributes:
          size: a size.
        '''
        size: int = 1

      def run(config, workdir):
        raise OSError(28, f"cannot write {workdir}: No space left on device")

      define_flags, main = _common.entry_points(Config, run, "study")
      _common.launch(main, define_flags)
      """
    )
  )
  done = subprocess.run(
    [sys.executable, str(script), "--workdir=w"],
    capture_output=True,
    text=True,
    timeout=120,
    env={**os.environ, "PYTHONPATH": str(_REPO)},
  )
  assert done.returncode == 1
  assert "Traceback" not in done.stderr
  assert done.stderr.strip().splitlines()[-1] == (
    "error: [Errno 28] cannot write w: No space left on device"
  )


def test_shared_options_are_checked_once_for_every_study():
  for field, value, message in [
    ("num_epochs", 0, "num_epochs must be an int >= 1, got 0"),
    ("batch_size", 1.5, "batch_size must be an int"),
    ("learning_rate", 0.0, "learning_rate must be a finite number > 0"),
    ("train_limit", 0, "train_limit must be an int >= 1 or None"),
    ("test_limit", -2, "test_limit must be an int >= 1 or None"),
    ("seed", -1, "seed must be an int >= 0"),
    ("dataset", "", "dataset must be a non-empty name"),
  ]:
    with pytest.raises((ValueError, TypeError), match=message):
      _Config(**{field: value})


def test_train_config_is_the_shared_options_with_overrides():
  config = _Config(num_epochs=2, learning_rate=0.5, seed=7, test_limit=9)
  base = config.train_config(model="cnn", learning_rate=0.25)
  assert (base.model, base.num_epochs, base.seed) == ("cnn", 2, 7)
  assert (base.learning_rate, base.test_limit) == (0.25, 9)
  assert (base.dataset, base.progress) == ("embedded", True)
  with pytest.raises(ValueError, match="optimizer"):
    config.train_config(optimizer="lbfgs")
  # The run options alone, as the studies that build their own pass them.
  assert set(config.train_options()) == {
    "dataset",
    "data_dir",
    "download",
    "num_devices",
    "checkpoint_every_steps",
    "checkpoint_every_secs",
    "progress",
  }


def test_check_names():
  _common.check_names("models", ("a", "b"), ("a", "b", "c"))
  with pytest.raises(ValueError, match=r"distinct names .*unknown: \['x'\]"):
    _common.check_names("models", ("a", "x"), ("a", "b"))
  with pytest.raises(ValueError, match="models must be distinct names"):
    _common.check_names("models", ("a", "a"), ("a", "b"))
  with pytest.raises(ValueError, match="at least 1"):
    _common.check_names("models", (), ("a",))
  with pytest.raises(TypeError, match="a sequence of names, got 'a'"):
    _common.check_names("models", "a", ("a",))


def test_train_variants_scores_every_run_of_every_seed(tmp_path):
  config = _Config(
    num_seeds=2,
    seed=3,
    num_epochs=1,
    batch_size=16,
    train_limit=32,
    test_limit=16,
    num_devices=1,
    progress=False,
  )
  results, records, seconds = _common.train_variants(
    config,
    {"mlp": {}, "fast": {"learning_rate": 0.1}},
    tmp_path,
    score=lambda name, seed, result: (name, seed, result["test_accuracy"]),
    model="mlp",
    model_kwargs={"hidden_sizes": (8,)},
  )
  assert list(records) == ["mlp", "fast"] and len(seconds["fast"]) == 2
  for name, mine in records.items():
    assert [r[:2] for r in mine] == [(name, 3), (name, 4)]
    assert [r[2] for r in mine] == [x["test_accuracy"] for x in results[name]]
  assert results["fast"][1].config.learning_rate == 0.1
  assert results["mlp"][0].config.num_epochs == 1
