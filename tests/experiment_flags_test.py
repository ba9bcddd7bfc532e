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
