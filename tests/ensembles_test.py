"""Tests of experiments/ensembles.py, prediction vs parameter averages."""

import dataclasses
import json

import jax
import numpy as np
import pytest
from absl import flags

from equivlab import data, train
from equivlab.nn import models
from experiments import ensembles

# Three members of a very small CNN, one epoch each.
_TINY = dict(
  num_seeds=3,
  seed=5,
  num_epochs=1,
  batch_size=32,
  train_limit=256,
  test_limit=64,
  features=(4,),
  dense_features=16,
  num_devices=1,
  progress=False,
)


def _flag_values(argv):
  flag_values = flags.FlagValues()
  holders = ensembles.define_flags(flag_values)
  flag_values(["ensembles", *argv])
  return holders


@pytest.fixture(scope="module")
def study(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("ensembles")
  return workdir, ensembles.run(ensembles.Config(**_TINY), workdir)


def test_run_writes_results_and_figures(study):
  workdir, results = study
  saved = json.loads((workdir / "results.json").read_text())
  assert saved["table"] == results["table"]
  assert [r["M"] for r in saved["records"]] == [1, 2, 3]
  assert [m["seed"] for m in saved["members"]] == [5, 6, 7]
  for name in ("accuracy", "nll"):
    assert (workdir / f"{name}.png").stat().st_size > 1000
  assert "sample standard deviation" in saved["table"]


def test_records_recompute_from_the_members(study):
  workdir, results = study
  records = results["records"]
  # M = 1: the ensemble, the average and the member are one network.
  first = records[0]
  assert first["prediction_average"] == first["members"][0]
  assert first["parameter_average"] == first["members"][0]
  # Each member's score is the engine's own test accuracy.
  for m, member in zip(records[-1]["members"], results["members"], strict=True):
    assert m["accuracy"] == pytest.approx(member["test_accuracy"], abs=1e-6)
  for row, record in zip(results["rows"], records, strict=True):
    accs = [m["accuracy"] for m in record["members"]]
    assert row["members_accuracy_mean"] == pytest.approx(np.mean(accs))
    std = np.std(accs, ddof=1) if len(accs) > 1 else 0.0
    assert row["members_accuracy_std"] == pytest.approx(std)


def test_prediction_average_by_hand(study):
  workdir, results = study
  config = ensembles.Config(**_TINY)
  # The members again, from their finished workdirs (no training).
  members = [
    train.train_and_evaluate(
      dataclasses.replace(ensembles.base_config(config), seed=seed),
      workdir / "runs" / "cnn" / f"seed{seed}",
    )
    for seed in config.seeds
  ]
  x, y = data.load_dataset("embedded", "test")
  x, y = x[:64], y[:64]
  probs = [
    jax.nn.softmax(models.apply_in_batches(m.model, m.variables, x))
    for m in members
  ]
  by_hand = np.mean(np.asarray(probs, np.float64), axis=0)
  picked = by_hand[np.arange(64), y]
  record = results["records"][-1]["prediction_average"]
  assert record["nll"] == pytest.approx(-np.mean(np.log(picked)), rel=1e-5)
  assert record["accuracy"] == np.mean(np.argmax(by_hand, -1) == y)


def test_flags_rerun_resumes_and_writes_the_same_results(study):
  workdir, _ = study
  first = (workdir / "results.json").read_bytes()
  argv = [f"--workdir={workdir}", "--features=4"]
  argv += [f"--{k}={v}" for k, v in _TINY.items() if k != "features"]
  holders = _flag_values(argv)
  assert holders.config() == ensembles.Config(**_TINY)
  ensembles.main(["ensembles"], holders)
  assert (workdir / "results.json").read_bytes() == first


@pytest.mark.parametrize(
  ("argv", "message"),
  [
    (["--num_seeds=0"], "num_seeds must be an int >= 1, got 0"),
    (["--norm=layer"], "norm must be one of"),
    (["--features=0"], r"features\[0\] must be an int >= 1, got 0"),
    (["--num_epochs=0"], "num_epochs must be an int >= 1, got 0"),
    (["--learning_rate=0"], "learning_rate must be a finite number"),
    (["--train_limit=0"], "train_limit must be an int >= 1"),
  ],
)
def test_bad_flags_are_flag_errors(argv, message):
  with pytest.raises(flags.IllegalFlagValueError, match=message):
    _flag_values(argv)
