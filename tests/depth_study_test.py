"""Tests of experiments/depth_study.py: vanishing gradients with depth.

The study's measurements are compared with an independent computation:
the networks written out by hand (`tests/probes_test.py`), differentiated
with `jax.grad` at the very variables the study probed (the engine's
initial state, caught as it is made, and the 1-epoch run's checkpoint),
and the activation slopes in closed form.
"""

import json

import jax
import numpy as np
import pytest
from absl import flags

from equivlab import train
from equivlab.training import state as state_lib
from experiments import depth_study
from tests import probes_test as by_hand

_TINY = {
  "activations": ("sigmoid",),
  "residual": "with",
  "batch_norm": "without",
  "num_epochs": 1,
  "batch_size": 16,
  "probe_size": 16,
  "width": 4,
  "train_limit": 32,
  "test_limit": 20,
  "num_devices": 1,
  "progress": False,
}


def _spy_on_initial_states(monkeypatch) -> list:
  """Records the params of every `create_train_state`, engine's and study's."""
  made = []
  original = state_lib.create_train_state

  def spy(*args, **kwargs):
    created = original(*args, **kwargs)
    made.append(jax.device_get(created.params))
    return created

  monkeypatch.setattr(state_lib, "create_train_state", spy)
  monkeypatch.setattr(train, "create_train_state", spy)
  return made


def _probe_batch(config):
  images, labels, _ = depth_study._probe_batch(config)
  return images, labels


def _check_probe_by_hand(measured, params, images, labels, spec):
  """The study's probe values against the network by hand at `params`."""
  hand_grad = jax.jit(
    jax.grad(by_hand._hand_loss), static_argnums=(3, 4, 5, 6, 7)
  )
  grads = hand_grad(params, images, labels, *spec)
  kernels = {name: layer for name, layer in grads.items() if "kernel" in layer}
  assert sorted(measured["grad_norms"]) == sorted(kernels)
  for name, layer in kernels.items():
    np.testing.assert_allclose(
      measured["grad_norms"][name],
      np.sqrt(np.sum(np.square(layer["kernel"]))),
      rtol=2e-4,
      err_msg=name,
    )
  forward = jax.jit(by_hand._hand_forward, static_argnums=(2, 3, 4, 5, 6))
  _, zs = forward(params, images, *spec)
  slopes = [by_hand._SLOPES[spec[1]](np.asarray(z, np.float64)) for z in zs]
  origin = {"sigmoid": 0.25, "tanh": 1.0, "relu": 1.0}[spec[1]]
  saturation = np.mean([np.mean(s < 0.1 * origin) for s in slopes])
  np.testing.assert_allclose(measured["saturation"], saturation, atol=0.02)
  np.testing.assert_allclose(
    measured["mean_slope"], np.mean([np.mean(s) for s in slopes]), rtol=1e-4
  )


def test_run_measures_what_the_network_by_hand_gives(
  tmp_path, monkeypatch, capsys
):
  config = depth_study.Config(depths=(2, 3), **_TINY)
  made = _spy_on_initial_states(monkeypatch)
  results = depth_study.run(config, tmp_path)
  # Per depth: the study's initial state, then the engine's: the same.
  assert len(made) == 4
  for study, engine in (made[0:2], made[2:4]):
    for a, b in zip(
      jax.tree_util.tree_leaves(study),
      jax.tree_util.tree_leaves(engine),
      strict=True,
    ):
      np.testing.assert_array_equal(a, b)

  images, labels = _probe_batch(config)
  saved = json.loads((tmp_path / "results.json").read_text())
  assert saved["variants"] == json.loads(json.dumps(results["variants"]))
  for depth, init in zip((2, 3), (made[0], made[2]), strict=True):
    entry = saved["variants"]["sigmoid+res"][str(depth)]
    spec = (depth, "sigmoid", True, False, False)
    _check_probe_by_hand(entry["init"], init, images, labels, spec)
    run_dir = tmp_path / "runs" / "sigmoid+res" / f"L{depth}" / "epochs1"
    _, trained = train.load_variables(run_dir)
    params = jax.device_get(trained["params"])
    _check_probe_by_hand(entry["epoch1"], params, images, labels, spec)
    # Sigmoid: every slope is at most 1/4.
    assert 0 < entry["init"]["mean_slope"] <= 0.25
    # One epoch: the full run is the 1-epoch run.
    assert entry["epoch1_matches_full_run"] is True
    assert entry["diverged"] is None and 0 <= entry["test_accuracy"] <= 1
  assert (tmp_path / "gradient_norms.png").read_bytes()[:4] == b"\x89PNG"
  assert "| sigmoid+res" in capsys.readouterr().out
  # The same command again resumes the finished runs: the same bytes.
  first = (tmp_path / "results.json").read_bytes()
  assert depth_study.run(config, tmp_path) == results
  assert (tmp_path / "results.json").read_bytes() == first


def test_one_epoch_run_is_the_first_epoch_of_the_longer_run(tmp_path):
  # Through the flags; a CNN with batch norm, 2 epochs of 2 steps.
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
      "--num_epochs=2",
      "--width=3",
      "--batch_size=16",
      "--probe_size=8",
      "--train_limit=32",
      "--test_limit=16",
      "--num_devices=1",
      "--noprogress",
    ]
  )
  depth_study.main(["depth_study"], holders)
  saved = json.loads((tmp_path / "results.json").read_text())
  assert list(saved["variants"]) == ["tanh+bn"]
  entry = saved["variants"]["tanh+bn"]["2"]
  assert entry["epoch1_matches_full_run"] is True
  run_dir = tmp_path / "runs" / "tanh+bn" / "L2"
  _, one_epoch = train.load_variables(run_dir / "epochs1")
  # The longer run's checkpoint after its first epoch (2 steps).
  _, first_epoch = train.load_variables(run_dir / "epochs2", step=2)
  _, last = train.load_variables(run_dir / "epochs2", step=4)
  one, first = (jax.tree_util.tree_leaves(v) for v in (one_epoch, first_epoch))
  for a, b in zip(one, first, strict=True):
    np.testing.assert_array_equal(a, b)
  # ... and the second epoch did move it on.
  assert any(
    not np.array_equal(a, b)
    for a, b in zip(one, jax.tree_util.tree_leaves(last), strict=True)
  )
  # The epoch-1 probe is the probe of that state, by hand.
  config = holders.config()
  images, labels = _probe_batch(config)
  spec = (2, "tanh", False, True, True)
  params = jax.device_get(first_epoch["params"])
  _check_probe_by_hand(entry["epoch1"], params, images, labels, spec)


def test_a_diverging_variant_is_recorded_not_fatal(tmp_path):
  # At 1e12 the first step may only kill every unit (a finite, constant
  # loss); at 1e30 the weights overflow.
  settings = {**_TINY, "activations": ("relu",), "learning_rate": 1e30}
  config = depth_study.Config(depths=(3,), **settings)
  results = depth_study.run(config, tmp_path)
  entry = results["variants"]["relu+res"]["3"]
  assert entry["diverged"].startswith("non-finite loss")
  assert entry["test_accuracy"] is None and entry["epoch1"] is None
  assert "| relu+res | diverged |" in results["table"]
  assert np.isfinite(entry["init"]["saturation"])


def test_gradient_ratio_and_tables_by_hand():
  norms = {"layer_00": 9.0, "layer_01": 6.0, "layer_02": 3.0, "output": 1.0}
  assert depth_study.gradient_ratio(norms) == 2.0  # layer 2 over layer 3
  assert depth_study.gradient_ratio({"layer_00": 5.0, "layer_01": 2.5}) == 1
  assert depth_study.gradient_ratio({"layer_00": 1, "layer_01": 0.0}) == (
    float("inf")
  )
  probe = {"grad_norms": norms, "saturation": 0.25, "mean_slope": 0.125}
  variants = {
    "tanh": {
      "3": {
        "init": probe,
        "epoch1": None,
        "diverged": "non-finite loss nan at step 2",
        "test_accuracy": None,
      }
    },
    "relu+bn": {
      "3": {
        "init": probe,
        "epoch1": probe,
        "diverged": None,
        "test_accuracy": 0.5,
      }
    },
  }
  config = depth_study.Config(depths=(3,))
  text = depth_study.tables(config, variants)
  assert "| tanh    | diverged |" in text
  assert "| relu+bn | 0.500    |" in text
  assert "| tanh    | 2.00e+00 / -        |" in text
  assert "| relu+bn | 2.00e+00 / 2.00e+00 |" in text
  assert "| relu+bn | 0.25 / 0.25 |" in text
  assert "| relu+bn | 0.125 / 0.125 |" in text


def test_grid_follows_the_subsets():
  config = depth_study.Config(
    activations=("relu", "tanh"), residual="with", batch_norm="both", width=8
  )
  assert list(depth_study.grid(config)) == [
    "relu+res",
    "relu+res+bn",
    "tanh+res",
    "tanh+res+bn",
  ]
  assert depth_study.grid(config)["tanh+res"] == {
    "activation": "tanh",
    "residual": True,
    "batch_norm": False,
    "width": 8,
  }
  base = depth_study.train_config(config, {"depth": 4}, 10)
  assert (base.model, base.optimizer, base.schedule) == (
    "deep_mlp",
    "momentum",
    "constant",
  )


@pytest.mark.parametrize(
  ("field", "value", "error", "message"),
  [
    ("architecture", "rnn", ValueError, "architecture must be one of"),
    ("depths", (2, 0), ValueError, r"depths\[1\] must be an int >= 1"),
    ("activations", ("gelu",), ValueError, "activations must be one of"),
    ("activations", (), ValueError, "activations must name at least one"),
    ("residual", "sometimes", ValueError, "residual must be one of"),
    ("num_epochs", 0, ValueError, "num_epochs must be an int >= 1"),
    ("learning_rate", 0.0, ValueError, "learning_rate must be a finite"),
    ("width", 2.5, TypeError, "width must be an int >= 1 or None"),
    ("probe_size", 0, ValueError, "probe_size must be an int >= 1"),
  ],
)
def test_bad_settings_are_named(field, value, error, message):
  with pytest.raises(error, match=message):
    depth_study.Config(**{field: value})


@pytest.mark.parametrize(
  ("argv", "message"),
  [
    (["--residual=sometimes"], "flag --residual=sometimes: residual must be"),
    (["--batch_norm=maybe"], "batch_norm must be one of"),
    (["--num_epochs=0"], "flag --num_epochs=0: num_epochs must be an int"),
    (["--depths=2,x"], "--depths must be a comma-separated list of ints"),
    (["--activations=gelu"], "activations must be one of"),
    (["--architecture=rnn"], "architecture must be one of"),
  ],
)
def test_bad_flags_are_flag_errors(argv, message):
  flag_values = flags.FlagValues()
  depth_study.define_flags(flag_values)
  with pytest.raises(flags.IllegalFlagValueError, match=message):
    flag_values(["depth_study", *argv])


def test_old_flag_names_are_gone():
  flag_values = flags.FlagValues()
  depth_study.define_flags(flag_values)
  assert "num_epochs" in flag_values and "epochs" not in flag_values
