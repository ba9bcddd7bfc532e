"""Tests of experiments/training_ablation.py, on tiny settings."""

import json

import numpy as np
import pytest
from absl import flags

from equivlab.analysis import ablation as analysis_ablation
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


def test_run_and_flags_write_the_same_results(tmp_path, capsys):
  results = ablation.run(ablation.Config(**_TINY), tmp_path / "run")
  saved = json.loads((tmp_path / "run" / "results.json").read_text())
  assert saved["table"] == results["table"]
  assert [r["seed"] for r in saved["runs"]["+bn"]] == [3, 4]
  # The rows again from the saved runs (json sorted the variants).
  again = {
    r["variant"]: r
    for r in analysis_ablation.summarize(saved["runs"], ("mse", "+bn"))
  }
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
