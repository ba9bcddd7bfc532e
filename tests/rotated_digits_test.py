"""Smoke test and analysis functions of experiments/rotated_digits.py."""

import dataclasses
import json

import numpy as np
import pytest

from equivlab import data
from experiments import rotated_digits


def test_smoke_writes_results_and_pictures(
  tmp_path, capsys, tiny_rotated_digits
):
  config = dataclasses.replace(tiny_rotated_digits, seed=3)
  results = rotated_digits.run(config, tmp_path)
  saved = json.loads((tmp_path / "results.json").read_text())
  assert saved["table"] == results["table"]
  assert saved["test_set"] == "embedded_rot"
  # The engine trains and tests on the rotated split too.
  run = json.loads(
    (tmp_path / "runs/p4cnn_rotpool/seed3/config.json").read_text()
  )
  assert (run["dataset"], run["augment"]) == ("embedded_rot", "none")
  assert [(r["model"], r["seed"]) for r in saved["runs"]] == [
    ("p4cnn_rotpool", 3)
  ]
  (row,) = saved["rows"]
  errors = [r["test_error"] for r in saved["runs"]]
  assert row["error_mean"] == pytest.approx(np.mean(errors))
  assert row["error_std"] == 0.0  # One seed: no spread.
  assert row["params"] == 6_380
  # Invariant by construction, trained or not: float error only.
  for r in saved["runs"]:
    assert r["rot90"]["logit_change"] < 1e-4
    assert r["rot90"]["pred_change"] == 0.0
  for name in ("errors", "curves", "examples"):
    assert (tmp_path / f"{name}.png").stat().st_size > 1000
  assert "| p4cnn_rotpool" in capsys.readouterr().out


def test_the_main_job_tests_on_rotated_digits(tiny_rotated_digits):
  name, images, labels = rotated_digits.rotated_test_set(tiny_rotated_digits)
  upright, upright_labels = data.load_dataset("embedded", "test")
  rotated, _ = data.load_dataset("embedded_rot", "test")
  assert name == "embedded_rot" and len(images) == 16
  np.testing.assert_array_equal(labels, upright_labels[:16])
  np.testing.assert_array_equal(images, rotated[:16])
  # Not the upright digits: most of them differ by far more than rounding.
  moved = np.abs(images - upright[:16]).max(axis=(1, 2, 3))
  assert np.mean(moved > 0.5) > 0.8


def test_unknown_model():
  with pytest.raises(ValueError, match=r"\(unknown: \['vit'\]\)"):
    rotated_digits.Config(models=("z2cnn", "vit"))


def test_same_command_writes_the_same_results_json(
  tmp_path, tiny_rotated_digits
):
  config = tiny_rotated_digits
  for name in ("a", "b"):
    rotated_digits.run(config, tmp_path / name)
  first, second = ((tmp_path / n / "results.json").read_bytes() for n in "ab")
  assert first == second


@pytest.mark.parametrize(
  ("field", "value", "message"),
  [
    ("num_seeds", 0, "num_seeds must be an int >= 1, got 0"),
    ("models", (), "models must be distinct names from"),
    ("num_invariance", 0, "num_invariance must be an int >= 1"),
    ("learning_rate", float("nan"), "learning_rate must be a finite number"),
    ("test_limit", 0, "test_limit must be an int >= 1"),
  ],
)
def test_bad_settings_are_clear_errors(field, value, message):
  with pytest.raises(ValueError, match=message):
    rotated_digits.Config(**{field: value})


def test_missing_tfds_dataset_fails_at_once(tmp_path):
  config = rotated_digits.Config(
    dataset="mnist", data_dir=str(tmp_path / "tfds")
  )
  with pytest.raises(FileNotFoundError):
    rotated_digits.run(config, tmp_path / "work")
