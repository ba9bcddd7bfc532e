"""Tests of experiments/shift_study.py, the per-layer shift study.

The stage outputs are checked against the CNN written out with
`lax.conv_general_dilated` and `lax.reduce_window`, and the errors against
a brute-force minimum over every output shift (the probe finds it with an
FFT) and the logits of `model.apply` on rolled digits.
"""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from equivlab.analysis import shift as shift_study
from equivlab.nn import models


def _tiny_cnn(padding="CIRCULAR"):
  model = models.get_model(
    "cnn", padding=padding, features=(3, 4), dense_features=8
  )
  x = jax.random.uniform(jax.random.key(0), (4, 16, 16, 1))
  return model, model.init(jax.random.key(1), x), x


def _conv(x, layer, padding):
  if padding == "CIRCULAR":
    x = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="wrap")
    padding = "VALID"
  y = jax.lax.conv_general_dilated(
    x,
    layer["kernel"],
    (1, 1),
    padding,
    dimension_numbers=("NHWC", "HWIO", "NHWC"),
  )
  return y + layer["bias"].reshape(1, 1, 1, -1)


def _pool(x):
  x = jnp.maximum(x, 0.0)
  return jax.lax.reduce_window(
    x, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID"
  )


def _stages_by_hand(p, x, padding):
  conv1 = _conv(x, p["Conv_0"], padding)
  conv2 = _conv(_pool(conv1), p["Conv_1"], padding)
  flat = _pool(conv2).reshape(x.shape[0], -1)
  dense = flat @ p["Dense_0"]["kernel"] + p["Dense_0"]["bias"][None, :]
  logits = jnp.maximum(dense, 0.0) @ p["Dense_1"]["kernel"]
  logits = logits + p["Dense_1"]["bias"][None, :]
  return {
    "conv1": conv1,
    "pool1": _pool(conv1),
    "conv2": conv2,
    "pool2": _pool(conv2),
    "dense": dense,
    "logits": logits,
  }


@pytest.mark.parametrize("padding", ["CIRCULAR", "SAME"])
def test_stage_outputs_match_the_cnn_by_hand(padding):
  model, variables, x = _tiny_cnn(padding)
  found = shift_study.stage_outputs(model, variables, x)
  expected = _stages_by_hand(variables["params"], x, padding)
  assert list(found) == list(shift_study.STAGES)
  for name in shift_study.STAGES:
    np.testing.assert_allclose(
      found[name], expected[name], rtol=1e-4, atol=1e-5, err_msg=name
    )


def _brute_force_error(before, after):
  """min over all shifts t of ||after - roll(before, t)|| / ||before||."""
  before, after = np.asarray(before, np.float64), np.asarray(after, np.float64)
  scale = np.linalg.norm(before)
  if before.ndim == 2:
    return np.linalg.norm(after - before) / scale
  h, w = before.shape[1:3]
  return min(
    np.linalg.norm(after - np.roll(before, t, axis=(1, 2))) / scale
    for t in itertools.product(range(h), range(w))
  )


@pytest.mark.parametrize(
  ("padding", "shift"), [("CIRCULAR", (0, 1)), ("SAME", (2, 2))]
)
def test_layer_errors_against_brute_force(padding, shift):
  model, variables, x = _tiny_cnn(padding)
  errors = shift_study.layer_errors(model, variables, x, shift)
  shifted = jnp.roll(x, shift, axis=(1, 2))
  before = _stages_by_hand(variables["params"], x, padding)
  after = _stages_by_hand(variables["params"], shifted, padding)
  for name in shift_study.STAGES:
    np.testing.assert_allclose(
      errors[name]["error"],
      _brute_force_error(before[name], after[name]),
      rtol=1e-3,
      atol=1e-5,
      err_msg=name,
    )
  logits, logits_shifted = (model.apply(variables, v) for v in (x, shifted))
  changed = np.mean(np.argmax(logits, -1) != np.argmax(logits_shifted, -1))
  assert errors["prediction_changed"] == changed


def test_circular_convs_exact_dense_not():
  model, variables, x = _tiny_cnn()
  errors = shift_study.layer_errors(model, variables, x, (2, 2))
  # Conv layers with circular padding commute with shifts exactly (an even
  # shift also survives the stride-2 pool: by half as many pixels).
  assert errors["conv1"]["error"] < 1e-5
  assert errors["conv1"]["best_shift"] == [2, 2]
  assert errors["conv2"]["error"] < 1e-5
  assert errors["conv2"]["best_shift"] == [1, 1]
  # The dense layer is not shift-equivariant (nor invariant).
  assert errors["dense"]["error"] > 1e-2
  assert errors["logits"]["error"] > 1e-2


def test_odd_shift_broken_by_pool_stride():
  model, variables, x = _tiny_cnn()
  errors = shift_study.layer_errors(model, variables, x, (0, 1))
  assert errors["conv1"]["error"] < 1e-5
  assert errors["pool1"]["error"] > 1e-2


def test_stage_outputs_rejects_other_structures():
  model = models.get_model("cnn", features=(1, 1, 1), dense_features=2)
  x = jnp.zeros((1, 8, 8, 1))
  with pytest.raises(ValueError, match="two conv blocks"):
    shift_study.stage_outputs(model, model.init(jax.random.key(0), x), x)


def test_parse_shifts():
  assert shift_study.parse_shifts(["0:1", "-2:3"]) == [(0, 1), (-2, 3)]
  with pytest.raises(ValueError, match="dy:dx"):
    shift_study.parse_shifts(["1"])
  with pytest.raises(ValueError, match="at least one"):
    shift_study.parse_shifts([])


def test_accuracy_rows_and_table_by_hand():
  def record(clean, moved):
    return dict(
      params=10,
      test_accuracy=clean,
      shifted_accuracy=moved,
      sweep=[clean, moved],
    )

  rows = shift_study.accuracy_rows(
    {"mlp": [record(0.9, 0.5), record(0.8, 0.3)], "cnn": [record(1.0, 1.0)]}
  )
  mlp, cnn = rows
  assert mlp["test_acc_mean"] == pytest.approx(0.85)
  assert mlp["shifted_acc_std"] == pytest.approx(0.1 * np.sqrt(2))
  assert mlp["drop_points"] == pytest.approx(45.0)
  np.testing.assert_allclose(mlp["sweep"], [0.85, 0.4])
  assert cnn["test_acc_std"] == 0.0
  one = shift_study.accuracy_table(rows, 2, num_seeds=1)
  assert "| shifted (<= 2 px) test acc |" in one and "+-" not in one
  two = shift_study.accuracy_table(rows, 2, num_seeds=2)
  assert "0.8500 +- 0.0707" in two
  assert two.endswith("(mean +- sample standard deviation over 2 seeds)")
