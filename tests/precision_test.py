"""Tests of experiments/precision.py (float32 / bfloat16 / float16)."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl import flags

from equivlab import data, gconv
from equivlab.analysis import probes
from equivlab.nn import models
from experiments import precision

# Both models, float32 and float16, one seed, one epoch of 4 steps.
_TINY = dict(
  dtypes=("float32", "float16"),
  num_seeds=1,
  seed=2,
  num_epochs=1,
  batch_size=16,
  train_limit=64,
  test_limit=32,
  cnn_features=(4,),
  cnn_dense_features=8,
  p4cnn_features=2,
  num_equivariance=4,
  num_timed_steps=2,
  num_devices=1,
  progress=False,
)


def _flag_values(argv):
  flag_values = flags.FlagValues()
  holders = precision.define_flags(flag_values)
  flag_values(["precision", *argv])
  return holders


@pytest.fixture(scope="module")
def study(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("precision")
  results = precision.run(precision.Config(**_TINY), workdir)
  return workdir, results


def test_run_writes_results_tables_and_figures(study):
  workdir, results = study
  saved = json.loads((workdir / "results.json").read_text())
  assert saved["table"] == results["table"]
  assert [(r["model"], r["precision"]) for r in saved["rows"]] == [
    ("cnn", "float32"),
    ("cnn", "float16"),
    ("p4cnn", "float32"),
    ("p4cnn", "float16"),
  ]
  for name in ("accuracy", "memory", "step_time", "equivariance"):
    assert (workdir / f"{name}.png").stat().st_size > 1000
  markdown = (workdir / "results.md").read_text()
  assert "ms per step" in markdown and "ms per step" not in saved["table"]
  timings = json.loads((workdir / "timings.json").read_text())
  assert set(timings["step_seconds"]) == {"cnn", "p4cnn"}


def test_rows_recompute_from_the_runs(study):
  _, results = study
  for row in results["rows"]:
    runs = [
      r
      for r in results["runs"]
      if (r["model"], r["dtype"]) == (row["model"], row["precision"])
    ]
    accuracies = [r["test_accuracy"] for r in runs]
    assert row["accuracy_mean"] == pytest.approx(np.mean(accuracies))
    assert row["accuracy_std"] == 0.0  # One seed.
    assert runs[0]["history"][-1]["test_accuracy"] == accuracies[0]
    # float32 master weights in every precision: 4 bytes per parameter.
    assert row["memory"]["params_bytes"] == 4 * row["params"]
  cnn = next(r for r in results["rows"] if r["model"] == "cnn")
  # 3x3x1x4 + 4, (14 * 14 * 4) x 8 + 8, 8 x 10 + 10.
  assert cnn["params"] == 40 + 6280 + 90


def test_float16_records_follow_its_metrics(study):
  workdir, results = study
  for record in results["runs"]:
    if record["dtype"] != "float16":
      assert "skipped_steps" not in record
      continue
    run_dir = workdir / "runs" / f"{record['model']}_float16" / "seed2"
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    steps = [r for r in map(json.loads, lines) if r["kind"] == "step"]
    assert [r["step"] for r in steps] == [1, 2, 3, 4]
    assert record["skipped_steps"] == sum(r["skipped"] for r in steps)
    assert record["first_loss_scale"] == 2.0**15
    # Fewer steps than the growth period: only skips move the scale.
    assert record["last_loss_scale"] == 2.0 ** (
      15 - sum(r["skipped"] for r in steps[:-1])
    )


def test_p4_errors_are_rounding_sized(study):
  _, results = study
  rows = {r["precision"]: r for r in results["p4_rows"]}
  eps16 = float(jnp.finfo(jnp.float16).eps)
  for name in precision.P4_LAYERS:
    assert rows["float32"][f"{name}_equivariance"] < 1e-5
    assert rows["float32"][f"{name}_rounding"] == 0.0
    # float16: a few eps at most, and its distance from float32 too.
    assert rows["float16"][f"{name}_equivariance"] < 8 * eps16
    assert 0.0 < rows["float16"][f"{name}_rounding"] < 8 * eps16


def _per_channel(bias):
  return jnp.reshape(bias, (1, 1, 1, -1, 1))  # [N, H, W, C, 4] maps.


def test_p4_errors_of_the_lifting_conv_by_hand():
  model = models.get_model("p4cnn", features=2)
  variables = models.init_model(jax.random.key(4), model)
  images, _ = data.load_dataset("embedded", "test")
  images = images[:3]
  errors = precision.p4_errors(model, variables, images, "float16")
  lift = variables["params"]["LiftingConv_0"]
  w16, b16 = (jnp.asarray(lift[k], jnp.float16) for k in ("kernel", "bias"))

  def by_hand(x):
    return gconv.lifting_conv(x, w16, padding="VALID") + _per_channel(b16)

  x16 = jnp.asarray(images, jnp.float16)
  out = np.asarray(by_hand(x16), np.float64)
  scale = np.abs(out).max()
  for k in (1, 2, 3):
    turned = np.asarray(by_hand(gconv.rotate_z2(x16, k)), np.float64)
    expected = np.abs(turned - np.asarray(gconv.rotate_p4(out, k))).max()
    got = errors["lifting conv"]["by_element"][f"rot {90 * k}"]
    np.testing.assert_allclose(got, expected / scale, rtol=1e-6, atol=1e-12)
  # The float32 reference sees the same (float16-rounded) digits: what is
  # measured is the layer's own rounding.
  full = gconv.lifting_conv(
    x16.astype(jnp.float32), lift["kernel"], padding="VALID"
  ) + _per_channel(lift["bias"])
  full = np.asarray(full, np.float64)
  rounding = np.abs(out - full).max() / np.abs(full).max()
  np.testing.assert_allclose(
    errors["lifting conv"]["rounding"], rounding, rtol=1e-6
  )


def test_residual_bytes_halve_the_network_part_by_hand():
  # The MLP x [5, 784] -> Dense(16) -> ReLU -> Dense(10): the backward pass
  # keeps x (for dW1), the hidden layer before and after the ReLU (for dW2
  # and the ReLU's slope), W2 (to send the error back) in the compute
  # precision, and the float32 softmax of the loss. In float16 the first
  # four take 2 bytes an element instead of 4; the rest does not change.
  model = models.get_model("mlp", hidden_sizes=(16,))
  variables = models.init_model(jax.random.key(0), model)
  x, y = jnp.zeros((5, 28, 28, 1)), jnp.zeros((5,), jnp.int32)
  full, half = (
    probes.residual_bytes(model, variables, x, y, compute_dtype=d)
    for d in ("float32", "float16")
  )
  network = 5 * 784 + 2 * 5 * 16 + 16 * 10
  assert full - half == 2 * network
  assert full > 4 * network + 4 * 5 * 10  # Plus the softmax and masks.


def test_flags_rerun_resumes_and_writes_the_same_results(study, tmp_path):
  workdir, _ = study
  first = (workdir / "results.json").read_bytes()
  argv = [f"--workdir={workdir}", "--dtypes=float32,float16"]
  argv += ["--cnn_features=4"]
  argv += [
    f"--{k}={v}"
    for k, v in _TINY.items()
    if k not in ("dtypes", "cnn_features")
  ]
  holders = _flag_values(argv)
  assert holders.config() == precision.Config(**_TINY)
  precision.main(["precision"], holders)
  assert (workdir / "results.json").read_bytes() == first


@pytest.mark.parametrize(
  ("argv", "message"),
  [
    (["--dtypes=float16"], "dtypes must include float32"),
    (["--dtypes=float32,float64"], "dtypes must be distinct names"),
    (["--dtypes=float32,float32"], "dtypes must be distinct names"),
    (["--models=mlp"], "models must be distinct names"),
    (["--num_seeds=0"], "num_seeds must be an int >= 1, got 0"),
    (["--loss_scale_init=0.5"], "loss_scale_init must be a finite number"),
    (["--num_timed_steps=0"], "num_timed_steps must be an int >= 1"),
    (["--cnn_features=0"], r"cnn_features\[0\] must be an int >= 1"),
    (["--test_limit=0"], "test_limit must be an int >= 1"),
  ],
)
def test_bad_flags_are_flag_errors(argv, message):
  with pytest.raises(flags.IllegalFlagValueError, match=message):
    _flag_values(argv)
