"""Tests of experiments/depth_study.py (seed 004 2(c))."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl import flags

from experiments import depth_study


def test_deep_mlp_layers_and_residual():
  x = jnp.ones((2, 4, 4, 1))
  for residual in (False, True):
    model = depth_study.make_model(
      "mlp", 3, "tanh", residual=residual, batch_norm=True, width=5
    )
    variables = model.init(jax.random.key(0), x)
    assert sorted(variables["params"]) == [
      "bn_00",
      "bn_01",
      "bn_02",
      "layer_00",
      "layer_01",
      "layer_02",
      "output",
    ]
    assert model.apply(variables, x).shape == (2, 10)


def test_residual_adds_the_identity():
  # With zero kernels and biases every residual layer is the identity, so
  # the hidden state stays act(0) = 0.5 (sigmoid) through the depth.
  x = jnp.ones((1, 2, 2, 1))
  model = depth_study.make_model("mlp", 4, "sigmoid", residual=True, width=3)
  params = model.init(jax.random.key(0), x)["params"]
  zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
  zeros["output"]["kernel"] = jnp.ones_like(zeros["output"]["kernel"])
  # h_0 = 0.5, then h_l = h_{l-1} + 0.5: h_3 = 2.0; logits = 3 * 2.0.
  logits = model.apply({"params": zeros}, x)
  np.testing.assert_allclose(logits, jnp.full((1, 10), 6.0), rtol=1e-6)


def test_deep_cnn_shapes():
  model = depth_study.make_model("cnn", 3, "relu", residual=True, width=4)
  x = jnp.ones((2, 8, 8, 1))
  variables = model.init(jax.random.key(0), x)
  assert variables["params"]["layer_02"]["kernel"].shape == (3, 3, 4, 4)
  assert model.apply(variables, x).shape == (2, 10)


def test_saturated_fraction_hand_computed():
  z = jnp.array([-10.0, -0.5, 0.0, 0.5, 10.0])
  np.testing.assert_allclose(
    depth_study.saturated_fraction(z, "sigmoid"), 0.4, rtol=1e-6
  )
  np.testing.assert_allclose(
    depth_study.saturated_fraction(z, "relu"), 0.6, rtol=1e-6
  )


def test_make_model_rejects_unknown_activation():
  with pytest.raises(ValueError, match="activation must be one of"):
    depth_study.make_model("mlp", 2, "gelu")


def test_make_model_rejects_unknown_architecture():
  with pytest.raises(ValueError, match="architecture must be one of"):
    depth_study.make_model("rnn", 2, "relu")


def test_make_model_rejects_zero_depth():
  with pytest.raises(ValueError, match="depth must be an int >= 1"):
    depth_study.make_model("mlp", 0, "relu")


def test_run_rejects_zero_epochs(tmp_path):
  with pytest.raises(ValueError, match="epochs must be >= 1"):
    depth_study.run(str(tmp_path), epochs=0)


def test_smoke_writes_results(tmp_path):
  holders = depth_study.define_flags(flags.FlagValues())
  assert {"workdir", "depths", "activations", "epochs"} <= set(holders)
  results = depth_study.run(
    str(tmp_path),
    depths=(2, 3),
    activations=("sigmoid",),
    residuals=(True,),
    batch_norms=(False,),
    epochs=1,
    batch_size=16,
    probe_size=16,
    width=4,
    train_limit=32,
    test_limit=20,
  )
  for name in ("results.json", "depth_study.md", "gradient_norms.png"):
    assert os.path.getsize(tmp_path / name) > 0
  with open(tmp_path / "results.json") as f:
    written = json.load(f)
  entry = written["variants"]["sigmoid+res"]["3"]
  assert list(entry["grad_norms_init"]) == [
    "layer_00",
    "layer_01",
    "layer_02",
    "output",
  ]
  assert 0.0 <= entry["test_accuracy"] <= 1.0
  assert written == json.loads(json.dumps(results))


def test_main_runs_the_flagged_subset(tmp_path):
  flag_values = flags.FlagValues()
  holders = depth_study.define_flags(flag_values)
  flag_values(
    [
      "depth_study",
      f"--workdir={tmp_path}",
      "--architecture=cnn",
      "--depths=2",
      "--activations=tanh",
      "--residual=without",
      "--batch_norm=with",
      "--epochs=1",
      "--width=4",
      "--batch_size=2000",
    ]
  )
  depth_study.main([], holders)
  with open(tmp_path / "results.json") as f:
    written = json.load(f)
  assert list(written["variants"]) == ["tanh+bn"]
  assert written["settings"]["architecture"] == "cnn"


def test_bad_subset_flag_is_a_flag_error():
  flag_values = flags.FlagValues()
  depth_study.define_flags(flag_values)
  with pytest.raises(flags.IllegalFlagValueError, match="residual"):
    flag_values(["depth_study", "--residual=sometimes"])
