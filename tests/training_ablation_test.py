"""Smoke test of the seed 000 part 4 training ablation, on tiny settings."""

import json

import pytest

from experiments import training_ablation as ablation


def test_epochs_to_fraction():
  assert ablation.epochs_to_fraction([0.5, 0.9, 0.96, 1.0], 0.95) == 3
  assert ablation.epochs_to_fraction([0.99], 0.95) == 1
  with pytest.raises(ValueError, match="at least one epoch"):
    ablation.epochs_to_fraction([], 0.95)


def test_train_config_maps_each_idea():
  config = ablation.AblationConfig()
  mse = ablation.train_config(config, "mse", 0)
  assert mse.loss == "mse" and mse.l2 == 0.0
  a = ablation.train_config(config, "softmax+l2", 1)
  assert a.loss == "softmax_ce" and a.l2 > 0 and a.seed == 1
  kwargs = dict(ablation.train_config(config, "group_norm", 0).model_kwargs)
  assert kwargs["norm"] == "group" and kwargs["kernel_init"] == "he"
  assert ablation.train_config(config, "+adam", 0).optimizer == "adam"
  assert ablation.train_config(config, "+shift_aug", 0).augment == "shift"
  with pytest.raises(ValueError, match="variant must be one of"):
    ablation.train_config(config, "+magic", 0)


def _fake_run(curve, seconds=1.0):
  history = [
    {"test_accuracy": a, "train_loss": 1.0 - a, "test_loss": 1.1 - a}
    for a in curve
  ]
  return {**history[-1], "history": history, "seconds": seconds}


def test_summarize_means_stds_and_differences():
  runs = {
    "mse": [_fake_run([0.5, 0.8]), _fake_run([0.6, 0.9])],
    "+bn": [_fake_run([0.94, 0.95]), _fake_run([0.7, 0.97])],
  }
  rows = {r["variant"]: r for r in ablation.summarize(runs)}
  assert rows["mse"]["test_acc_mean"] == pytest.approx(0.85)
  assert rows["mse"]["test_acc_std"] == pytest.approx(0.0707107, rel=1e-5)
  assert rows["+bn"]["vs_mse"] == pytest.approx(0.96 - 0.85)
  assert rows["+bn"]["vs_+bn"] == pytest.approx(0.0)
  # 95% of the final accuracy: mse 0.5 < 0.76 and 0.6 < 0.855 (epoch 2
  # both); +bn 0.94 >= 0.9025 (epoch 1) and 0.7 < 0.9215 (epoch 2).
  assert rows["mse"]["epochs_to_95pct"] == 2.0
  assert rows["+bn"]["epochs_to_95pct"] == 1.5


def test_run_bad_input(tmp_path):
  with pytest.raises(ValueError, match="variants must be a non-empty subset"):
    ablation.run(ablation.AblationConfig(variants=("nope",)), tmp_path)
  with pytest.raises(ValueError, match="seeds must hold at least one"):
    ablation.run(ablation.AblationConfig(seeds=()), tmp_path)


@pytest.mark.slow
def test_tiny_ablation_writes_its_files(tmp_path):
  config = ablation.AblationConfig(
    variants=("+bn",),
    seeds=(3,),
    num_epochs=2,
    batch_size=32,
    features=(4,),
    dense_features=8,
    train_limit=64,
    test_limit=32,
    progress=False,
  )
  results = ablation.run(config, tmp_path)
  for name in (
    "results.json",
    "table.md",
    "loss_curves.png",
    "test_accuracy.png",
    "filters_plus_bn.png",
  ):
    assert (tmp_path / name).stat().st_size > 0, name
  saved = json.loads((tmp_path / "results.json").read_text())
  assert [r["variant"] for r in saved["table"]] == ["+bn"]
  assert len(saved["runs"]["+bn"]) == 1
  assert len(saved["runs"]["+bn"][0]["history"]) == 2
  assert saved["runs"]["+bn"][0]["seed"] == 3
  row = results["table"][0]
  assert 0.0 <= row["test_acc_mean"] <= 1.0 and row["test_acc_std"] == 0.0
  assert 1 <= row["epochs_to_95pct"] <= 2
  assert "+-" in (tmp_path / "table.md").read_text()
