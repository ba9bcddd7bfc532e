"""Smoke and unit tests of benchmarks/batch_cost.py (no timing asserted)."""

import json

import numpy as np
import pytest

from benchmarks import batch_cost


def test_fit_line_recovers_a_line_and_rejects_bad_input():
  fit = batch_cost.fit_line([1.0, 2.0, 4.0], [3.0, 5.0, 9.0])
  np.testing.assert_allclose([fit["slope"], fit["intercept"]], [2.0, 1.0])
  np.testing.assert_allclose(fit["r2"], 1.0)
  with pytest.raises(ValueError):
    batch_cost.fit_line([1.0, 1.0], [2.0, 3.0])


def test_seed_formulas_are_linear_in_batch_size():
  one = batch_cost.seed_compute(1, 2, 8, 4, 3)
  assert batch_cost.seed_compute(4, 2, 8, 4, 3) == 4 * one
  m1 = batch_cost.seed_memory(1, 2, 8, 4, 3)
  m2 = batch_cost.seed_memory(2, 2, 8, 4, 3)
  m4 = batch_cost.seed_memory(4, 2, 8, 4, 3)
  assert m4 - m2 == 2 * (m2 - m1)


def test_run_writes_its_files(tmp_path):
  batch_cost.run(
    tmp_path,
    hidden=(8, 8),
    max_batch=4,
    steps=1,
    repeats=1,
    time_fit_min_batch=1,
  )
  saved = json.loads((tmp_path / "results.json").read_text())
  assert saved
  assert (tmp_path / "batch_cost.md").exists()
  assert (tmp_path / "batch_cost.png").read_bytes()[:4] == b"\x89PNG"
