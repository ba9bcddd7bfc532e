"""Tests of experiments/shift_equivariance.py (seed 003 question 3)."""

import json
import os

import jax
import jax.numpy as jnp
import pytest
from absl import flags

from equivlab import models
from experiments import shift_equivariance


def _tiny_cnn(padding="CIRCULAR"):
  model = models.get_model(
    "cnn", padding=padding, features=(3, 4), dense_features=8
  )
  x = jax.random.uniform(jax.random.key(0), (4, 16, 16, 1))
  return model, model.init(jax.random.key(1), x), x


def test_circular_convs_exact_dense_not():
  model, variables, x = _tiny_cnn()
  errors = shift_equivariance.layer_errors(model, variables, x, (2, 2))
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
  errors = shift_equivariance.layer_errors(model, variables, x, (0, 1))
  assert errors["conv1"]["error"] < 1e-5
  assert errors["pool1"]["error"] > 1e-2


def test_stage_outputs_rejects_other_structures():
  model = models.get_model("cnn", features=(1, 1, 1), dense_features=2)
  x = jnp.zeros((1, 8, 8, 1))
  with pytest.raises(ValueError, match="two conv blocks"):
    shift_equivariance.stage_outputs(model, model.init(jax.random.key(0), x), x)


def test_parse_shifts():
  assert shift_equivariance.parse_shifts(["0:1", "-2:3"]) == [(0, 1), (-2, 3)]
  with pytest.raises(ValueError, match="dy:dx"):
    shift_equivariance.parse_shifts(["1"])


def test_run_rejects_three_blocks(tmp_path):
  with pytest.raises(ValueError, match="two entries"):
    shift_equivariance.run(str(tmp_path), features=(2, 2, 2))


def test_smoke_writes_results(tmp_path):
  holders = shift_equivariance.define_flags(flags.FlagValues())
  assert {"workdir", "shifts", "train_steps"} <= set(holders)
  results = shift_equivariance.run(
    str(tmp_path),
    paddings=("CIRCULAR",),
    shifts=((0, 2),),
    train_steps=2,
    batch_size=8,
    num_images=4,
    features=(2, 2),
    dense_features=4,
    train_limit=16,
  )
  for name in (
    "results.json",
    "shift_equivariance.md",
    "shift_equivariance.png",
  ):
    assert os.path.getsize(tmp_path / name) > 0
  with open(tmp_path / "results.json") as f:
    written = json.load(f)
  assert written == json.loads(json.dumps(results))
  errors = written["models"]["CIRCULAR"]["shifts"]["0,2"]
  assert errors["conv1"]["error"] < 1e-5
