"""Ensembles: average predictions, not parameters.

Averaging the PARAMETERS of M independently trained networks is not an
ensemble; averaging their PREDICTIONS, `g(x) = 1/M sum_m f(x; theta_m)`, is
(Goodfellow, Bengio & Courville 2016, "Deep Learning", section 7.11).
Networks trained from different initialisations order their hidden units
differently (the permutation symmetry of a layer's units), so the parameter
average mixes unrelated units. `compare` scores both averages and the
members alone, by accuracy and negative log-likelihood (nats per example,
of the predicted probability of the true label).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from equivlab.analysis import metrics
from equivlab.nn import models
from equivlab.training import regularization


def softmax(logits: np.ndarray) -> np.ndarray:
  """Row-wise softmax of `[N, K]` logits, in float64."""
  z = np.asarray(logits, np.float64)
  e = np.exp(z - z.max(axis=-1, keepdims=True))
  return e / e.sum(axis=-1, keepdims=True)


def scores(probs: np.ndarray, labels: np.ndarray) -> dict[str, float]:
  """Accuracy and NLL (nats, mean over rows) of probabilities `[N, K]`."""
  return {
    "accuracy": metrics.accuracy(probs, labels),
    "nll": metrics.nll(probs, labels),
  }


def _probs_fn(model: Any):
  """`f(variables, images) -> probabilities` of `model` in eval mode."""

  def probs(variables, images):
    return softmax(models.apply_in_batches(model, variables, images))

  return probs


def compare(members, test_x, test_y) -> list[dict[str, Any]]:
  """One record per ensemble size M = 1 .. len(members).

  Args:
    members: trained results (each a `TrainResult`) of one model, in seed order.
    test_x: test images `[N, H, W, C]`.
    test_y: test labels `[N]`.

  Returns:
    Records with "M", "prediction_average" and "parameter_average"
    (accuracy and NLL), and "members" (each of the first M members'
    scores).

  Raises:
    ValueError: if there is no member.
  """
  if not members:
    raise ValueError("members must hold at least one trained result, got 0.")
  model = members[0].model
  probs = _probs_fn(model)
  variables = [m.variables for m in members]
  alone = [scores(probs(v, test_x), test_y) for v in variables]
  records = []
  for size in range(1, len(members) + 1):
    ensemble = regularization.ensemble_predict(probs, variables[:size], test_x)
    averaged = regularization.average_parameters(variables[:size])
    records.append(
      {
        "M": size,
        "prediction_average": scores(ensemble, test_y),
        "parameter_average": scores(probs(averaged, test_x), test_y),
        "members": alone[:size],
      }
    )
  return records


def summary_rows(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
  """One table row per record of `compare`: formatted columns for the
  table, and "members_*" columns with the members' mean and sample std.
  """
  rows = []
  for r in records:
    acc = metrics.mean_std([m["accuracy"] for m in r["members"]])
    nll = metrics.mean_std([m["nll"] for m in r["members"]])
    pred, param = r["prediction_average"], r["parameter_average"]
    rows.append(
      {
        "M": r["M"],
        "prediction avg acc": f"{pred['accuracy']:.4f}",
        "parameter avg acc": f"{param['accuracy']:.4f}",
        "members acc": f"{acc[0]:.4f} +- {acc[1]:.4f}",
        "prediction avg NLL": f"{pred['nll']:.4f}",
        "parameter avg NLL": f"{param['nll']:.4f}",
        "members NLL": f"{nll[0]:.4f} +- {nll[1]:.4f}",
        "members_accuracy_mean": acc[0],
        "members_accuracy_std": acc[1],
        "members_nll_mean": nll[0],
        "members_nll_std": nll[1],
      }
    )
  return rows
