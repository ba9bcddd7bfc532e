"""Tests of equivlab/analysis/ensembling.py and the ensemble functions."""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from equivlab import data, train
from equivlab.analysis import ensembling
from equivlab.training import regularization as reg


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
  result = ensembling.scores(probs, np.array([0, 1, 1]))
  assert result["accuracy"] == pytest.approx(2 / 3)  # argmax ties -> 0.
  nll = -(math.log(0.5) + math.log(0.1) + math.log(0.8)) / 3
  assert result["nll"] == pytest.approx(nll)
  with pytest.raises(ValueError, match=r"logits must be \[N, K\]"):
    ensembling.scores(probs, np.array([0, 1]))


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
  ens, avg = ensembling.scores(ensemble, y), ensembling.scores(averaged, y)
  alone = [ensembling.scores(probs(v, x), y) for v in variables]
  assert min(a["accuracy"] for a in alone) > 0.7
  # -log is convex: the mixture's NLL is at most the members' mean NLL.
  assert ens["nll"] <= np.mean([a["nll"] for a in alone])
  assert avg["nll"] > ens["nll"] + 0.3
  assert avg["accuracy"] < ens["accuracy"] - 0.05
  assert avg["accuracy"] < min(a["accuracy"] for a in alone)


def test_softmax_rows_sum_to_one_in_float64():
  probs = ensembling.softmax(np.array([[0.0, math.log(3.0)], [1e3, 0.0]]))
  assert probs.dtype == np.float64
  np.testing.assert_allclose(probs, [[0.25, 0.75], [1.0, 0.0]])


def test_summary_rows_give_the_members_mean_and_sample_std():
  member = lambda a, n: {"accuracy": a, "nll": n}  # noqa: E731
  record = {
    "M": 2,
    "prediction_average": member(0.9, 0.3),
    "parameter_average": member(0.5, 1.0),
    "members": [member(0.8, 0.4), member(0.6, 0.6)],
  }
  (row,) = ensembling.summary_rows([record])
  assert row["members_accuracy_mean"] == pytest.approx(0.7)
  assert row["members_accuracy_std"] == pytest.approx(0.2 / math.sqrt(2))
  assert row["prediction avg acc"] == "0.9000"
  assert row["members NLL"] == "0.5000 +- 0.1414"


def test_compare_needs_a_member():
  with pytest.raises(ValueError, match="at least one trained result"):
    ensembling.compare([], np.zeros((1, 28, 28, 1)), np.zeros(1, int))
