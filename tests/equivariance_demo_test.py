"""Tests of experiments/equivariance_demo.py (the README's quick first look)."""

import json

import chex
import jax
import matplotlib.image
import numpy as np
import pytest
from absl import flags

from equivlab import data, groups
from equivlab.analysis import invariance
from equivlab.nn import layers, models
from experiments import equivariance_demo


def _flag_values(*argv):
  flag_values = flags.FlagValues()
  holders = equivariance_demo.define_flags(flag_values)
  flag_values(["equivariance_demo", *argv])
  return holders


def _by_hand(fn, digit, group):
  """`max_g max |fn(g x) - fn(x)| / max |fn(x)|`, rotating with NumPy."""
  base = np.asarray(fn(digit), np.float64)
  worst = 0.0
  for g in groups.elements(group)[1:]:
    moved = np.rot90(
      digit[:, :, ::-1] if g.mirror else digit, g.rotation, (1, 2)
    )
    diff = np.asarray(fn(np.ascontiguousarray(moved)), np.float64) - base
    worst = max(worst, float(np.max(np.abs(diff)) / np.max(np.abs(base))))
  return worst


def test_smoke_through_run(tmp_path, capsys):
  config = equivariance_demo.Config(features=2, digit_index=3, channel=1)
  results = equivariance_demo.run(config, tmp_path)
  saved = json.loads((tmp_path / "results.json").read_text())
  assert saved["table"] == results["table"]
  assert saved["group_elements"] == [[0, 0], [1, 0], [2, 0], [3, 0]]
  images, labels = data.embedded_digits("test")
  assert saved["digit_label"] == labels[3]
  p4cnn, plain = saved["rows"]
  assert p4cnn["network"] == "P4CNN"
  assert sorted(p4cnn["errors"]) == ["rot 180", "rot 270", "rot 90"]
  assert p4cnn["invariance_error"] == max(p4cnn["errors"].values())
  # Random weights already give an invariant P4CNN; the plain CNN is not.
  assert p4cnn["invariance_error"] < 1e-5
  assert plain["invariance_error"] > 1e-2
  assert saved["lifting_equivariance_error"] < 1e-5
  # The parameter count by hand: lifting 3*3*1*2 + 2, five group convs
  # 3*3*2*4*2 + 2, six batch norms 2 * 2, the head 4*4*2*4*10 + 10.
  assert p4cnn["parameters"] == 20 + 5 * 146 + 6 * 4 + 1290
  out = capsys.readouterr().out
  assert "| P4CNN" in out and "< 1e-5" in out and "0.836" not in out
  picture = matplotlib.image.imread(tmp_path / "lifted_feature_maps.png")
  assert picture.ndim == 3 and picture.shape[0] > 100
  for name in ("results.md", "timings.json"):
    assert (tmp_path / name).stat().st_size > 0


def _networks(config, digit):
  key = jax.random.key(config.seed, impl="rbg")
  return invariance.equivariant_and_plain(
    key, digit, features=config.features, group=config.group
  )


def test_invariance_errors_match_a_hand_rotation():
  """The measured errors equal the definition computed with np.rot90."""
  config = equivariance_demo.Config(group="p4m", features=2, digit_index=5)
  images, _ = data.embedded_digits("test")
  digit = images[5:6]
  _, networks = _networks(config, digit)
  measured = equivariance_demo._measure(config, digit)
  for (name, fn, _), row in zip(networks, measured["rows"], strict=True):
    assert row["network"] == name
    assert len(row["errors"]) == 7
    np.testing.assert_allclose(
      max(row["errors"].values()), _by_hand(fn, digit, "p4m"), rtol=1e-6
    )


def test_p4cnn_weights_are_the_seeds():
  """The measured network is P4CNN(features) with the first key of its seed."""
  config = equivariance_demo.Config(features=2, seed=4)
  digit = data.embedded_digits("test")[0][:1]
  eq_vars, networks = _networks(config, digit)
  key = jax.random.split(jax.random.key(4, impl="rbg"))[0]
  model = layers.P4CNN(features=2)
  expected = model.init(key, digit)
  chex.assert_trees_all_close(eq_vars, expected, rtol=1e-6)
  np.testing.assert_allclose(
    networks[0][1](digit), model.apply(expected, digit), rtol=1e-5, atol=1e-6
  )


@pytest.mark.parametrize(
  ("error", "text"),
  [(0.0, "< 1e-5"), (9.99e-6, "< 1e-5"), (1e-5, "1e-05"), (0.83551, "0.836")],
)
def test_reported_error(error, text):
  assert equivariance_demo.reported_error(error) == text


def test_same_command_writes_the_same_results_json(tmp_path):
  config = equivariance_demo.Config(features=2)
  for name in ("a", "b"):
    equivariance_demo.run(config, tmp_path / name)
  first, second = ((tmp_path / n / "results.json").read_bytes() for n in "ab")
  assert first == second


def test_smoke_through_the_flags(tmp_path, capsys):
  holders = _flag_values(
    f"--workdir={tmp_path}", "--features=2", "--group=p4m", "--seed=1"
  )
  assert holders.config() == equivariance_demo.Config(
    features=2, group="p4m", seed=1
  )
  equivariance_demo.main(["equivariance_demo"], holders)
  saved = json.loads((tmp_path / "results.json").read_text())
  assert saved["rows"][0]["network"] == "P4MCNN"
  assert len(saved["group_elements"]) == 8
  assert "logit change under the 8 rotations and mirrors" in (
    capsys.readouterr().out
  )


def test_default_workdir_is_under_runs():
  assert _flag_values().workdir == "runs/equivariance_demo"


@pytest.mark.parametrize(
  ("argv", "message"),
  [
    (["--features=0"], "features must be an int >= 1, got 0"),
    (["--group=c4"], "group must be one of"),
    (["--channel=-1"], r"channel must be an int >= 0, got -1"),
    (
      ["--features=2", "--channel=2"],
      r"channel must be an int in \[0, 1\] .*features is 2.*got 2",
    ),
    (["--digit_index=1000"], r"digit_index must be an int in \[0, 999\]"),
    (["--seed=-1"], "seed must be an int >= 0, got -1"),
  ],
)
def test_bad_flags_are_flag_errors_naming_the_flag(argv, message):
  with pytest.raises(flags.IllegalFlagValueError, match=message):
    _flag_values(*argv)


def test_bad_settings_through_the_config():
  with pytest.raises(ValueError, match="features must be an int >= 1"):
    equivariance_demo.Config(features=0)
  with pytest.raises(TypeError, match="features must be an int"):
    equivariance_demo.Config(features=2.0)
  with pytest.raises(TypeError, match="cache_dir must be a directory path"):
    equivariance_demo.Config(cache_dir=3)


def test_the_lifting_layer_is_the_p4cnns_first_layer():
  config = equivariance_demo.Config(features=2)
  digit = data.embedded_digits("test")[0][:1]
  eq_vars, _ = _networks(config, digit)
  lifted = invariance.lifting_fn(eq_vars, config.group)(digit)
  _, state = layers.P4CNN(features=2).apply(
    eq_vars,
    digit,
    capture_intermediates=lambda mdl, _: type(mdl).__name__ == "LiftingConv",
    mutable=["intermediates"],
  )
  (captured,) = jax.tree.leaves(state["intermediates"])
  np.testing.assert_allclose(lifted, captured, rtol=1e-6, atol=1e-6)


def test_plain_cnn_is_the_p4cnn_layout_without_symmetry():
  model = models.PlainCNN(features=4, num_classes=3)
  x = np.zeros((2, 28, 28, 1), np.float32)
  variables = jax.eval_shape(model.init, jax.random.key(0), x)
  # Six 3x3 layers (1 -> 4, then 4 -> 4) and the 4x4 layer to 3 logits.
  want = (9 * 4 + 4) + 5 * (9 * 16 + 4) + (16 * 4 * 3 + 3)
  assert models.count_params(variables) == want
  assert jax.eval_shape(model.apply, variables, x).shape == (2, 3)
  with pytest.raises(ValueError, match="features must be an int >= 1"):
    models.PlainCNN(features=0)
  with pytest.raises(ValueError, match="28"):
    model.init(jax.random.key(0), np.zeros((1, 20, 20, 1), np.float32))
