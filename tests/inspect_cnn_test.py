"""Smoke test of experiments/inspect_cnn.py on tiny settings."""

import json

import numpy as np
import pytest

from experiments import inspect_cnn


def test_smoke_writes_results_and_pictures(tmp_path, capsys):
  config = inspect_cnn.InspectConfig(
    features=(4, 4, 4),
    num_epochs=1,
    batch_size=16,
    train_limit=64,
    shift=2,
    patch_size=5,
    search_sizes=(5, 28),
    num_devices=1,
    progress=False,
  )
  results = inspect_cnn.run(config, tmp_path)
  saved = json.loads((tmp_path / "results.json").read_text())
  assert [s["shift_px"] for s in saved["shifted"]] == [-2, 0, 2]
  assert saved["occlusion"]["label"] == 6
  search = saved["flip_search"]
  assert set(search["flip_fraction"]) == {"5", "28"}
  assert search["found"] == any(v > 0 for v in search["flip_fraction"].values())
  expected = (
    [f"filters_layer{i}.png" for i in (1, 2, 3)]
    + [f"feature_maps_{d}_layer{i}.png" for d in (0, 8) for i in (1, 2, 3)]
    + ["shifted.png", "occlusion.png", "flip.png"]
  )
  assert saved["files"] == expected == results["files"]
  for name in expected:
    assert (tmp_path / name).stat().st_size > 1000
  assert "flip search:" in capsys.readouterr().out


def test_pick_digit_prefers_correct_predictions():
  labels = np.array([3, 6, 6, 1])
  predicted = np.array([3, 0, 6, 1])
  assert inspect_cnn.pick_digit(None, labels, predicted, 6) == 2
  assert inspect_cnn.pick_digit(None, labels, np.zeros(4, int), 6) == 1
  with pytest.raises(ValueError, match="no image of class 9"):
    inspect_cnn.pick_digit(None, labels, predicted, 9)


def test_negative_shift(tmp_path):
  with pytest.raises(ValueError, match="shift must be >= 0"):
    inspect_cnn.run(inspect_cnn.InspectConfig(shift=-1), tmp_path)
