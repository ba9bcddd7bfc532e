"""Smoke test of experiments/equivariance_demo.py (the README's main job)."""

import json

import matplotlib.image
import numpy as np
import pytest
from absl import flags

from experiments import equivariance_demo


def test_demo_writes_results_and_picture(tmp_path):
  config = equivariance_demo.DemoConfig(features=2, digit_index=3)
  results = equivariance_demo.run(config, tmp_path)
  saved = json.loads((tmp_path / "results.json").read_text())
  assert saved["p4cnn_invariance_error"] == results["p4cnn_invariance_error"]
  assert 0 <= saved["digit_label"] <= 9
  assert saved["group_elements"] == [[0, 0], [1, 0], [2, 0], [3, 0]]
  # Random weights already give an invariant P4CNN; the plain CNN is not.
  assert saved["p4cnn_invariance_error"] < 1e-5
  assert saved["plain_cnn_invariance_error"] > 1e-2
  assert saved["lifting_equivariance_error"] < 1e-5
  picture = matplotlib.image.imread(tmp_path / "lifted_feature_maps.png")
  assert picture.ndim == 3 and picture.shape[0] > 100


def test_demo_rejects_a_channel_out_of_range(tmp_path):
  config = equivariance_demo.DemoConfig(features=2, channel=2)
  with pytest.raises(ValueError, match="channel must be in 0..1, got 2"):
    equivariance_demo.run(config, tmp_path)


def test_invariance_error_by_hand():
  logits = [[1.0, -2.0], [1.0, -2.0], [1.5, -2.0]]
  error = equivariance_demo.invariance_error(np.array(logits))
  assert error == pytest.approx(0.25)


def test_main_parses_its_own_flags(tmp_path, capsys):
  flag_values = flags.FlagValues()
  holders = equivariance_demo.define_flags(flag_values)
  flag_values(["demo", f"--workdir={tmp_path}", "--features=2"])
  equivariance_demo.main(["demo"], holders)
  assert (tmp_path / "results.json").exists()
  assert "invariance error" in capsys.readouterr().out
