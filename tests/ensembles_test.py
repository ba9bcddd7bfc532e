"""Tests of experiments/ensembles.py and the ensemble functions."""

import dataclasses
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl import flags

from equivlab import data, train
from equivlab.nn import models
from equivlab.training import regularization as reg
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


def test_ensemble_predict_of_softmaxes_by_hand():
  # Members whose "parameters" are logits: softmax(0, ln 3) = (1/4, 3/4)
  # and softmax(ln 4, 0) = (4/5, 1/5); the ensemble is their mean.
  members = [jnp.array([0.0, math.log(3.0)]), jnp.array([math.log(4.0), 0.0])]
  got = reg.ensemble_predict(lambda p, x: jax.nn.softmax(p), members, None)
  np.testing.assert_allclose(got, [21 / 40, 19 / 40], rtol=1e-6)
  # Averaging the logits instead is another model: softmax(ln 2, ln 3 / 2).
  logit_mean = jax.nn.softmax(reg.average_parameters(members))
  np.testing.assert_allclose(
    logit_mean, np.array([2.0, 3**0.5]) / (2 + 3**0.5), rtol=1e-6
  )


def test_ensemble_functions_refuse_mismatched_members():
  a = {"w": jnp.ones((2, 3))}
  with pytest.raises(ValueError, match="member 1 differs"):
    reg.average_parameters([a, {"w": jnp.ones((3, 2))}])
  with pytest.raises(ValueError, match="member 1 differs"):
    reg.ensemble_predict(lambda p, x: p, [a, {"v": jnp.ones((2, 3))}], 0)
  shapes = iter([(2,), (3,)])
  with pytest.raises(ValueError, match="predictions must share one shape"):
    reg.ensemble_predict(lambda p, x: jnp.zeros(next(shapes)), [a, a], None)
  with pytest.raises(ValueError, match="at least one member"):
    reg.ensemble_predict(lambda p, x: p, [], 0)


def test_scores_by_hand():
  probs = np.array([[0.5, 0.5], [0.9, 0.1], [0.2, 0.8]])
  result = ensembles.scores(probs, np.array([0, 1, 1]))
  assert result["accuracy"] == pytest.approx(2 / 3)  # argmax ties -> 0.
  nll = -(math.log(0.5) + math.log(0.1) + math.log(0.8)) / 3
  assert result["nll"] == pytest.approx(nll)
  with pytest.raises(ValueError, match=r"logits must be \[N, K\]"):
    ensembles.scores(probs, np.array([0, 1]))


def test_two_mlps_averaging_parameters_is_clearly_worse(tmp_path):
  # Two tiny MLPs from different seeds (different initialisations and
  # batch orders), trained by the engine on the digits.
  config = train.TrainConfig(
    model="mlp",
    model_kwargs={"hidden_sizes": (32,)},
    train_limit=512,
    test_limit=200,
    num_epochs=3,
    batch_size=32,
    learning_rate=3e-3,
    num_devices=1,
    progress=False,
  )
  members = [
    train.train_and_evaluate(
      dataclasses.replace(config, seed=seed), tmp_path / str(seed)
    )
    for seed in (0, 1)
  ]
  x, y = data.load_dataset("embedded", "test")
  x, y = x[:200], y[:200]
  model = members[0].model

  def probs(variables, images):
    return jax.nn.softmax(model.apply(variables, images))

  variables = [m.variables for m in members]
  ensemble = reg.ensemble_predict(probs, variables, x)
  # The hand check: the mean of the two members' softmax outputs.
  by_hand = (probs(variables[0], x) + probs(variables[1], x)) / 2
  np.testing.assert_allclose(ensemble, by_hand, rtol=1e-6)
  averaged = probs(reg.average_parameters(variables), x)
  ens, avg = ensembles.scores(ensemble, y), ensembles.scores(averaged, y)
  alone = [ensembles.scores(probs(v, x), y) for v in variables]
  assert min(a["accuracy"] for a in alone) > 0.7
  # -log is convex: the mixture's NLL is at most the members' mean NLL.
  assert ens["nll"] <= np.mean([a["nll"] for a in alone])
  assert avg["nll"] > ens["nll"] + 0.3
  assert avg["accuracy"] < ens["accuracy"] - 0.05
  assert avg["accuracy"] < min(a["accuracy"] for a in alone)


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
