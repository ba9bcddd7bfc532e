"""Smoke test of experiments/shifted_digits.py on tiny settings."""

import json

import numpy as np
import pytest

from equivlab import train
from experiments import shifted_digits


def _tiny(models, max_shift, **overrides):
  """A config that trains for one epoch on a few dozen digits."""
  settings = dict(
    num_epochs=1,
    batch_size=16,
    train_limit=32,
    test_limit=16,
    num_examples=2,
    num_devices=1,
    progress=False,
  )
  return shifted_digits.ShiftedConfig(
    models=models, max_shift=max_shift, **{**settings, **overrides}
  )


def test_smoke_writes_results_and_pictures(tmp_path, capsys):
  config = _tiny(("mlp",), 2, train_limit=64, test_limit=24, num_examples=3)
  results = shifted_digits.run(config, tmp_path)
  saved = json.loads((tmp_path / "results.json").read_text())
  assert saved["table"] == results["table"]
  assert [r["model"] for r in saved["rows"]] == ["mlp"]
  for row in saved["rows"]:
    assert 0.0 <= row["shifted test acc"] <= 1.0
    assert float(row["drop (points)"]) == pytest.approx(
      100 * (row["test acc"] - row["shifted test acc"]), abs=0.051
    )
  assert len(saved["sweep"]["mlp"]) == 3
  # Shift 0 of the sweep is the plain test set.
  assert saved["sweep"]["mlp"][0] == pytest.approx(saved["rows"][0]["test acc"])
  for name in ("accuracy", "shift_sweep", "curves", "examples"):
    assert (tmp_path / f"{name}.png").stat().st_size > 1000
  assert "| mlp" in capsys.readouterr().out


def test_accuracy_by_hand():
  logits = np.array([[0.0, 1.0], [2.0, 1.0], [0.0, 3.0]])
  assert shifted_digits.accuracy(logits, np.array([1, 1, 1])) == 2 / 3


def test_unknown_model(tmp_path):
  config = shifted_digits.ShiftedConfig(models=("mlp", "vgg"))
  with pytest.raises(ValueError, match=r"unknown models \['vgg'\]"):
    shifted_digits.run(config, tmp_path)


def test_negative_shift(tmp_path):
  config = shifted_digits.ShiftedConfig(max_shift=-1)
  with pytest.raises(ValueError, match="max_shift must be an int >= 0"):
    shifted_digits.run(config, tmp_path)


def test_mlp_variants_train_with_their_overrides(tmp_path):
  config = _tiny(("mlp+shift_aug", "mlp_wide"), 3)
  results = shifted_digits.run(config, tmp_path)
  rows = {r["model"]: r for r in results["rows"]}
  # 784-1024-1024-10 against the default 784-256-256-10.
  assert rows["mlp_wide"]["params"] == 784 * 1024 + 1024 * 1024 + 10250 + 2048
  aug_config, _ = train.load_variables(tmp_path / "runs" / "mlp+shift_aug")
  assert aug_config.model == "mlp"
  assert (aug_config.augment, aug_config.max_shift) == ("shift", 3)


def test_circular_gap_models_ignore_shifts_of_digits_inside_the_frame(
  tmp_path,
):
  # Exact invariance to circular shifts; the embedded digits have empty
  # margins, so zero-filled shifts of up to 2 pixels are circular shifts
  # and every point of the sweep is the same accuracy.
  config = _tiny(("cnn_gap", "p4cnn_gap", "p4cnn_gap+orientation"), 2)
  results = shifted_digits.run(config, tmp_path)
  for name in config.models:
    sweep = results["sweep"][name]
    assert sweep == [sweep[0]] * 3, (name, sweep)
  assert results["config"]["schedule"] == "cosine"
