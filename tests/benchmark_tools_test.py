"""Tests of benchmarks/init_time.py and tools/mutants.py (no timing)."""

import importlib.util
import pathlib

import pytest

from benchmarks import init_time

_ROOT = pathlib.Path(__file__).resolve().parents[1]


def _mutants_module():
  spec = importlib.util.spec_from_file_location(
    "mutants", _ROOT / "tools" / "mutants.py"
  )
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.mark.parametrize("case", sorted(init_time._CASE_CODE))
def test_init_time_programs_compile_and_report_one_result(case):
  source = init_time.case_source(case)
  compile(source, f"<{case}>", "exec")
  assert source.count('print("RESULT"') == 1


def test_mutants_apply_the_chosen_occurrence_only():
  mutants = _mutants_module()
  m = mutants.Mutant("x-1", "f.py", "a", "b", ("t",), occurrence=1)
  assert mutants._apply("a a a", m) == "a b a"
  assert mutants._apply("c", m) is None


def test_mutants_ids_are_unique_and_selected_by_prefix():
  mutants = _mutants_module()
  ids = [m.id for m in mutants.MUTANTS]
  assert len(ids) == len(set(ids)) and len(ids) >= 40
  chosen = mutants.select("dqn,rnn-1")
  assert {m.id for m in chosen} >= {"dqn-1", "dqn-16", "rnn-1", "rnn-10"}
  with pytest.raises(SystemExit, match="matches no mutant"):
    mutants.select("nothing")


def test_most_mutants_still_find_their_text():
  # Code moves; a few stale mutants are reported as such, not as kills.
  mutants = _mutants_module()
  found = [
    mutants._apply((_ROOT / m.path).read_text(), m) is not None
    for m in mutants.MUTANTS
  ]
  assert sum(found) >= 0.9 * len(found)
