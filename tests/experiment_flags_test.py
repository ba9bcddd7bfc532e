"""Every experiment registers its flags on demand, with real help strings.

Experiments register their absl flags in `define_flags(flag_values)`, called
only when the module runs as a script, so that any number of them can be
imported into one process (as pytest does) without a DuplicateFlagError.
"""

import importlib
import pathlib

import pytest
from absl import flags

_EXPERIMENTS = sorted(
  p.stem
  for p in (pathlib.Path(__file__).parent.parent / "experiments").glob("*.py")
  if not p.name.startswith("_")
)


def test_all_experiments_import_together():
  modules = [importlib.import_module(f"experiments.{n}") for n in _EXPERIMENTS]
  assert len(modules) >= 8


@pytest.mark.parametrize("name", _EXPERIMENTS)
def test_flags_register_parse_and_have_help(name, tmp_path):
  module = importlib.import_module(f"experiments.{name}")
  flag_values = flags.FlagValues()
  module.define_flags(flag_values)
  own = [flag_values[n] for n in flag_values]
  assert "workdir" in flag_values, f"{name} has no --workdir flag"
  for flag in own:
    assert flag.help and len(flag.help) > 10, (name, flag.name)
  flag_values([name, f"--workdir={tmp_path}"])
  assert flag_values["workdir"].value == str(tmp_path)
  # No module registers anything on the global FLAGS at import time.
  assert "workdir" not in flags.FLAGS


def _not_prepared_message(tmp_path) -> str:
  from equivlab import data  # noqa: PLC0415

  with pytest.raises(FileNotFoundError) as error:
    data.load_dataset("mnist", "train", data_dir=tmp_path)
  return str(error.value)


@pytest.mark.parametrize("name", _EXPERIMENTS)
def test_flags_named_by_the_data_message_exist_where_dataset_does(
  name, tmp_path
):
  # The message for an unprepared tfds data set tells the user which flags
  # to pass: every experiment that takes --dataset must accept them.
  import re  # noqa: PLC0415

  module = importlib.import_module(f"experiments.{name}")
  flag_values = flags.FlagValues()
  module.define_flags(flag_values)
  if "dataset" not in flag_values:
    return
  named = re.findall(r"--(\w+)(=\w+)?", _not_prepared_message(tmp_path))
  assert {flag for flag, _ in named} == {"download", "data_dir"}
  argv = [name, "--dataset=mnist"]
  for flag, value in named:
    argv.append(f"--{flag}={tmp_path}" if value else f"--{flag}")
  flag_values(argv)  # raises absl's error for a flag that does not exist
  assert flag_values["download"].value is True
  assert flag_values["data_dir"].value == str(tmp_path)
