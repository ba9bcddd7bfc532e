"""Smoke test and analysis functions of experiments/rotated_digits.py."""

import dataclasses
import json

import jax.numpy as jnp
import numpy as np
import pytest

from experiments import rotated_digits


def test_smoke_writes_results_and_pictures(
  tmp_path, capsys, tiny_rotated_digits
):
  config = dataclasses.replace(tiny_rotated_digits, seed=3)
  results = rotated_digits.run(config, tmp_path)
  saved = json.loads((tmp_path / "results.json").read_text())
  assert saved["table"] == results["table"]
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
    assert r["rot90"]["max_rel_error"] < 1e-4
    assert r["rot90"]["pred_change"] == 0.0
  for name in ("errors", "curves", "examples"):
    assert (tmp_path / f"{name}.png").stat().st_size > 1000
  assert "| p4cnn_rotpool" in capsys.readouterr().out


def test_rot90_invariance_by_hand():
  images = np.arange(2 * 3 * 3, dtype=np.float32).reshape(2, 3, 3, 1)

  def invariant(x):  # Total ink and the centre pixel: rotation invariant.
    return jnp.stack([x.sum(axis=(1, 2, 3)), x[:, 1, 1, 0]], axis=-1)

  def corner(x):  # The top-left pixel and a constant.
    return jnp.stack([x[:, 0, 0, 0], jnp.ones(x.shape[0])], axis=-1)

  result = rotated_digits.rot90_invariance(invariant, images)
  assert result == {"rel_error": 0.0, "max_rel_error": 0.0, "pred_change": 0.0}
  result = rotated_digits.rot90_invariance(corner, images)
  # Image 0 has corners 0, 2, 8, 6 (turns 1, 2, 3 bring 2, 8, 6 to the
  # top-left); logits (c, 1) move by |c - 0| against |(0, 1)| = 1.
  first = np.array([2.0, 8.0, 6.0]) / 1.0
  second = np.array([2.0, 8.0, 6.0]) / np.hypot(9.0, 1.0)
  np.testing.assert_allclose(
    result["rel_error"], np.mean([first, second]), rtol=1e-6
  )
  np.testing.assert_allclose(result["max_rel_error"], 8.0, rtol=1e-6)


def test_error_percent():
  logits = np.array([[0.0, 1.0], [2.0, 1.0]])
  assert rotated_digits.error_percent(logits, np.array([1, 1])) == 50.0


def test_rejects_non_square_images():
  with pytest.raises(ValueError, match="square"):
    rotated_digits.rot90_invariance(lambda x: x, np.zeros((1, 3, 4, 1)))


def test_unknown_model():
  with pytest.raises(ValueError, match=r"unknown models \['vit'\]"):
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
    ("models", (), "models must be names from"),
    ("num_invariance", 0, "num_invariance must be an int >= 1"),
    ("learning_rate", float("nan"), "learning_rate must be a finite number"),
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
