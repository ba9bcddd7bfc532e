"""Shift equivariance of a dense-head CNN, stage by stage.

Convolutions commute with shifts, so why does a CNN with a dense head do
worse on shifted digits? For a circular input shift `(dy, dx)` this
measures at every stage of `equivlab.nn.models.CNN` (conv1, pool1, conv2,
pool2, the dense hidden layer and the logits)

  error = min_t ||f(shift x) - roll(f(x), t)|| / ||f(x)||

with `equivlab.analysis.probes.shift_equivariance_error` (t over all shifts
of the feature map; for the dense stages, whose outputs no shift acts on,
the invariance error `||f(shift x) - f(x)|| / ||f(x)||`), and how often the
predicted class changes. Conv and dense outputs are read with
`probes.intermediates`; pool outputs are recomputed from them as
`max_pool(relu(conv))`, as in `models.CNN`. A stride-2 pool keeps
equivariance only to even shifts (Azulay & Weiss 2019, "Why do deep
convolutional networks generalize so poorly to small image
transformations?"). `accuracy_rows` and `accuracy_table` summarise how
classifiers' test accuracy survives shifted test digits, over seeds.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from equivlab.analysis import metrics, probes, tables

STAGES = ("conv1", "pool1", "conv2", "pool2", "dense", "logits")


def parse_shifts(values: Any) -> list[tuple[int, int]]:
  """`["0:1", "2:2"]` -> `[(0, 1), (2, 2)]`.

  Raises:
    ValueError: if `values` is empty or an entry is not `dy:dx` with
      integers.
  """
  if isinstance(values, str) or not values:
    raise ValueError(f"shifts must hold at least one 'dy:dx', got {values!r}.")
  out = []
  for text in values:
    parts = str(text).split(":")
    try:
      if len(parts) != 2:
        raise ValueError
      out.append((int(parts[0]), int(parts[1])))
    except ValueError:
      raise ValueError(
        f"shifts must be 'dy:dx' with integers, got {text!r}."
      ) from None
  return out


def stage_outputs(
  model: nn.Module, variables: dict, images: jax.Array
) -> dict[str, jax.Array]:
  """The outputs of the stages of a two-block dense-head `models.CNN`.

  Args:
    model: `models.CNN` with two conv blocks, `pool=True`, `head="dense"`
      and `norm=None` (the "cnn" defaults).
    variables: its variables.
    images: `[N, H, W, C]`.

  Returns:
    Stage name (`STAGES`) -> array: conv outputs `[N, H', W', C']` before
    the ReLU, pool outputs after ReLU and pool, the dense hidden layer's
    pre-activation `[N, D]` and the logits `[N, K]`.

  Raises:
    ValueError: if the model is not of that structure.
  """
  found = probes.intermediates(model, variables, images, train=False)
  needed = ("Conv_0", "Conv_1", "Dense_0", "Dense_1")
  if any(name not in found for name in needed) or "Conv_2" in found:
    raise ValueError(
      "expected a models.CNN with two conv blocks and a dense head "
      f"(submodules {needed}), got submodules {sorted(found)}."
    )
  if getattr(model, "norm", None) is not None or not model.pool:
    raise ValueError(
      "expected a models.CNN with norm=None and pool=True, got "
      f"norm={model.norm!r}, pool={model.pool!r}."
    )
  pool = lambda x: nn.max_pool(nn.relu(x), (2, 2), strides=(2, 2))
  return {
    "conv1": found["Conv_0"],
    "pool1": pool(found["Conv_0"]),
    "conv2": found["Conv_1"],
    "pool2": pool(found["Conv_1"]),
    "dense": found["Dense_0"],
    "logits": found["Dense_1"],
  }


def layer_errors(
  model: nn.Module,
  variables: dict,
  images: jax.Array,
  shift: tuple[int, int],
) -> dict[str, dict]:
  """Shift equivariance error of every stage for one circular input shift.

  Args:
    model: a dense-head `models.CNN` (see `stage_outputs`).
    variables: its variables.
    images: `[N, H, W, C]`.
    shift: `(dy, dx)` in pixels; the images are rolled circularly.

  Returns:
    Stage -> {"error": float, "best_shift": [ty, tx]} (best_shift is
    [0, 0] for the dense stages), plus "prediction_changed": the fraction
    of images whose predicted class changes.
  """
  errors, shifts, logits = jax.device_get(
    _layer_errors(model, variables, jnp.asarray(images), jnp.asarray(shift))
  )
  out = {
    name: {
      "error": float(errors[name]),
      "best_shift": [int(v) for v in shifts[name]],
    }
    for name in STAGES
  }
  out["prediction_changed"] = metrics.changed_fraction(*logits)
  return out


@functools.partial(jax.jit, static_argnums=0)
def _layer_errors(model, variables, images, shift):
  # One compilation per model and image shape; the shift is traced.
  shifted = jnp.roll(images, (shift[0], shift[1]), axis=(1, 2))
  before = stage_outputs(model, variables, images)
  after = stage_outputs(model, variables, shifted)
  errors, shifts = {}, {}
  for name in STAGES:
    errors[name], shifts[name] = probes.shift_equivariance_error(
      before[name], after[name]
    )
  return errors, shifts, (before["logits"], after["logits"])


def errors_table(models: dict[str, dict]) -> str:
  """The errors per model, stage and shift (Markdown), and accuracies.

  Args:
    models: padding (or any label) -> {"accuracy", "test_accuracy",
      "shifts": "dy,dx" -> `layer_errors`}.
  """
  rows = []
  for padding, entry in models.items():
    for name in (*STAGES, "prediction_changed"):
      row = {"padding": padding, "stage": name}
      for shift, errors in entry["shifts"].items():
        value = errors[name]
        if isinstance(value, dict):
          t = value["best_shift"]
          value = f"{value['error']:.2e} @({t[0]},{t[1]})"
        else:
          value = f"{value:.3f}"
        row[f"shift ({shift})"] = value
      rows.append(row)
  accuracies = ", ".join(
    f"{p}: {e['accuracy']:.4f} ({e['test_accuracy']:.4f} on the test split)"
    for p, e in models.items()
  )
  return (
    tables.format_table(rows)
    + "\n\nerror @(ty,tx): relative error at the best output shift; "
    + "prediction_changed: fraction of predictions changed by the shift.\n"
    + f"accuracy on the measured digits: {accuracies}"
  )


def accuracy_rows(records: dict[str, list[dict]]) -> list[dict[str, Any]]:
  """One row per model from its per-seed records, for `accuracy_table`.

  Args:
    records: model -> per seed "params", "test_accuracy",
      "shifted_accuracy" and "sweep" (accuracy per largest shift).

  Returns:
    Rows with "model", "params", the accuracies' mean and sample std over
    seeds ("test_acc_mean", "test_acc_std", "shifted_acc_mean",
    "shifted_acc_std"), "drop_points" (mean drop, in points) and the mean
    "sweep".
  """
  rows = []
  for name, mine in records.items():
    clean = metrics.mean_std([r["test_accuracy"] for r in mine])
    shifted = metrics.mean_std([r["shifted_accuracy"] for r in mine])
    drops = [100 * (r["test_accuracy"] - r["shifted_accuracy"]) for r in mine]
    rows.append(
      {
        "model": name,
        "params": mine[0]["params"],
        "test_acc_mean": clean[0],
        "test_acc_std": clean[1],
        "shifted_acc_mean": shifted[0],
        "shifted_acc_std": shifted[1],
        "drop_points": metrics.mean_std(drops)[0],
        "sweep": np.mean([r["sweep"] for r in mine], axis=0).tolist(),
      }
    )
  return rows


def accuracy_table(rows: list[dict], max_shift: int, num_seeds: int) -> str:
  """The Markdown table of `accuracy_rows` (stds only over several seeds)."""

  def acc(row, key):
    std = f" +- {row[key + '_std']:.4f}" if num_seeds > 1 else ""
    return f"{row[key + '_mean']:.4f}{std}"

  table = tables.format_table(
    [
      {
        "model": r["model"],
        "params": r["params"],
        "test acc": acc(r, "test_acc"),
        f"shifted (<= {max_shift} px) test acc": acc(r, "shifted_acc"),
        "drop (points)": f"{r['drop_points']:.1f}",
      }
      for r in rows
    ]
  )
  if num_seeds > 1:
    table += f"\n(mean +- sample standard deviation over {num_seeds} seeds)"
  return table
