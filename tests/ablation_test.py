"""Tests of equivlab/analysis/ablation.py."""

import numpy as np
import pytest

from equivlab.analysis import ablation


def test_epochs_to_fraction():
  assert ablation.epochs_to_fraction([0.5, 0.9, 0.96, 1.0], 0.95) == 3
  assert ablation.epochs_to_fraction([0.99], 0.95) == 1
  with pytest.raises(ValueError, match="at least one epoch"):
    ablation.epochs_to_fraction([], 0.95)


def _fake_run(curve):
  history = [
    {"test_accuracy": a, "train_loss": 1.0 - a, "test_loss": 1.1 - a}
    for a in curve
  ]
  return {**history[-1], "history": history}


def test_summarize_means_sample_stds_and_differences():
  runs = {
    "mse": [_fake_run([0.5, 0.8]), _fake_run([0.6, 0.9])],
    "+bn": [_fake_run([0.94, 0.95]), _fake_run([0.7, 0.97])],
    "+adam": [_fake_run([0.9])],
  }
  rows = {r["variant"]: r for r in ablation.summarize(runs, ("mse", "+bn"))}
  assert rows["mse"]["test_acc_mean"] == pytest.approx(0.85)
  # Sample std (ddof=1) of 0.8 and 0.9: 0.05 * sqrt(2).
  assert rows["mse"]["test_acc_std"] == pytest.approx(0.05 * np.sqrt(2))
  assert rows["+adam"]["test_acc_std"] == 0.0  # One seed: no spread.
  assert rows["+bn"]["vs_mse"] == pytest.approx(0.96 - 0.85)
  assert rows["+bn"]["vs_+bn"] == pytest.approx(0.0)
  assert rows["+adam"]["vs_+bn"] == pytest.approx(0.9 - 0.96)
  # 95% of the final accuracy: mse 0.5 < 0.76 and 0.6 < 0.855 (epoch 2
  # both); +bn 0.94 >= 0.9025 (epoch 1) and 0.7 < 0.9215 (epoch 2).
  assert rows["mse"]["epochs_to_95pct"] == 2.0
  assert rows["+bn"]["epochs_to_95pct"] == 1.5
  assert rows["mse"]["final_test_loss"] == pytest.approx(1.1 - 0.85)
  assert "vs_mse" not in ablation.summarize(runs)[0]  # No references.
