"""Tests of the training ablation (optimizers, schedules, augmentation)."""

import json

import numpy as np
import pytest
from absl import flags

from experiments import training_ablation as ablation

# Two variants, two seeds, one epoch of a very small CNN.
_TINY = dict(
  variants=("mse", "+bn"),
  num_seeds=2,
  seed=3,
  num_epochs=1,
  batch_size=32,
  features=(4,),
  dense_features=8,
  train_limit=64,
  test_limit=32,
  num_devices=1,
  progress=False,
)


def _flag_values(argv):
  flag_values = flags.FlagValues()
  holders = ablation.define_flags(flag_values)
  flag_values(["training_ablation", *argv])
  return holders


def test_epochs_to_fraction():
  assert ablation.epochs_to_fraction([0.5, 0.9, 0.96, 1.0], 0.95) == 3
  assert ablation.epochs_to_fraction([0.99], 0.95) == 1
  with pytest.raises(ValueError, match="at least one epoch"):
    ablation.epochs_to_fraction([], 0.95)


def _train_config(config, name):
  variant = ablation.variant(config, name)
  base = ablation.base_config(config)
  return type(base)(**{**vars(base), **variant.overrides})


def test_each_variant_changes_its_idea_only():
  config = ablation.Config(features=(8, 16), dense_features=32)
  mse = _train_config(config, "mse")
  assert (mse.model, mse.loss, mse.l2, mse.optimizer) == (
    "cnn",
    "mse",
    0.0,
    "momentum",
  )
  assert dict(mse.model_kwargs) == {
    "features": (8, 16),
    "dense_features": 32,
    "norm": None,
    "dropout_rate": 0.0,
    "kernel_init": "lecun",
  }
  a = _train_config(config, "softmax+l2")
  assert (a.loss, a.l2) == ("softmax_ce", 5e-4)
  bn = _train_config(config, "+bn")
  kwargs = dict(bn.model_kwargs)
  assert (kwargs["norm"], kwargs["kernel_init"]) == ("batch", "he")
  group = dict(_train_config(config, "group_norm").model_kwargs)
  assert group == {**kwargs, "norm": "group"}
  adam = _train_config(config, "+adam")
  assert (adam.optimizer, adam.learning_rate) == ("adam", 1e-3)
  shift = _train_config(config, "+shift_aug")
  assert (shift.augment, shift.max_shift) == ("shift", 2)
  with pytest.raises(ValueError, match="variant must be one of"):
    ablation.variant(config, "+magic")


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
  rows = {r["variant"]: r for r in ablation.summarize(runs)}
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


def test_run_and_flags_write_the_same_results(tmp_path, capsys):
  results = ablation.run(ablation.Config(**_TINY), tmp_path / "run")
  saved = json.loads((tmp_path / "run" / "results.json").read_text())
  assert saved["table"] == results["table"]
  assert [r["seed"] for r in saved["runs"]["+bn"]] == [3, 4]
  # The rows again from the saved runs (json sorted the variants).
  again = {r["variant"]: r for r in ablation.summarize(saved["runs"])}
  assert saved["rows"] == [again[v] for v in ("mse", "+bn")]
  bn = next(r for r in saved["rows"] if r["variant"] == "+bn")
  finals = [r["test_accuracy"] for r in saved["runs"]["+bn"]]
  assert bn["test_acc_std"] == pytest.approx(np.std(finals, ddof=1))
  assert "sample standard deviation over 2 seeds" in saved["table"]
  for record in saved["runs"]["mse"]:
    assert record["history"][-1]["test_accuracy"] == record["test_accuracy"]
    assert "params" not in record
  for name in ("loss_curves", "test_accuracy", "filters_plus_bn"):
    assert (tmp_path / "run" / f"{name}.png").stat().st_size > 1000
  assert "| +bn" in capsys.readouterr().out

  # The same study through the flags, in the same workdir: it finds its
  # finished runs (a config that differed would be refused there) and
  # writes the same bytes.
  first = (tmp_path / "run" / "results.json").read_bytes()
  argv = [f"--workdir={tmp_path / 'run'}", "--variants=mse,+bn"]
  argv += ["--features=4"]
  argv += [
    f"--{k}={v}" for k, v in _TINY.items() if k not in ("variants", "features")
  ]
  ablation.main(["training_ablation"], _flag_values(argv))
  assert (tmp_path / "run" / "results.json").read_bytes() == first


@pytest.mark.parametrize(
  ("argv", "message"),
  [
    (["--variants=nope"], r"variants must be distinct names .*\['nope'\]"),
    (["--variants=mse,mse"], "variants must be distinct names"),
    (["--num_seeds=0"], "num_seeds must be an int >= 1, got 0"),
    (["--features=0"], r"features\[0\] must be an int >= 1, got 0"),
    (["--features=a"], "--features must be a comma-separated list of ints"),
    (["--max_shift=-1"], r"max_shift must be an int in \[0, 13\], got -1"),
    (["--num_epochs=0"], "num_epochs must be an int >= 1, got 0"),
    (["--dense_features=0"], "dense_features must be an int >= 1, got 0"),
  ],
)
def test_bad_flags_are_flag_errors(argv, message):
  with pytest.raises(flags.IllegalFlagValueError, match=message):
    _flag_values(argv)
