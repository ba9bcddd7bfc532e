"""Tests of experiments/inspect_cnn.py on tiny settings."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl import flags

from equivlab import data, train
from equivlab.analysis import inspection, occlusion
from experiments import inspect_cnn

_TINY = dict(
  features=(4, 4, 4),
  num_epochs=1,
  batch_size=16,
  train_limit=64,
  shift=2,
  patch_size=5,
  search_sizes=(5, 28),
  num_devices=1,
  progress=False,
)


def _flag_values(argv):
  flag_values = flags.FlagValues()
  holders = inspect_cnn.define_flags(flag_values)
  flag_values(["inspect_cnn", *argv])
  return holders


def _shift_by_hand(image, dx):
  out = np.zeros_like(image)
  if dx >= 0:
    out[:, dx:] = image[:, : image.shape[1] - dx]
  else:
    out[:, :dx] = image[:, -dx:]
  return out


def test_run_checks_its_measurements_and_flags_agree(tmp_path, capsys):
  config = inspect_cnn.Config(**_TINY)
  results = inspect_cnn.run(config, tmp_path / "run")
  saved = json.loads((tmp_path / "run" / "results.json").read_text())
  assert saved["summary"] == results["summary"]
  expected = (
    [f"filters_layer{i}.png" for i in (1, 2, 3)]
    + [f"feature_maps_{d}_layer{i}.png" for d in (0, 8) for i in (1, 2, 3)]
    + ["shifted.png", "occlusion.png", "flip.png"]
  )
  assert saved["files"] == expected
  for name in expected:
    assert (tmp_path / "run" / name).stat().st_size > 1000
  assert "flip search:" in capsys.readouterr().out

  # The same run again returns the trained model from its last checkpoint
  # (no training): recompute the measurements independently.
  result = train.train_and_evaluate(
    inspect_cnn.train_config(config), tmp_path / "run" / "runs" / "cnn"
  )
  assert result["test_accuracy"] == saved["test_accuracy"]

  def logits(x):
    return np.asarray(result.model.apply(result.variables, x, train=False))

  test_x, test_y = data.load_dataset("embedded", "test")
  predicted = np.argmax(result.logits(test_x), -1)
  one = test_x[inspection.pick_digit(test_y, predicted, 1)]
  for record in saved["shifted"]:
    moved = _shift_by_hand(one, record["shift_px"])
    probs = jax.nn.softmax(logits(moved[None])[0])
    assert record["predicted"] == int(np.argmax(probs))
    assert record["probability"] == pytest.approx(float(probs.max()), rel=1e-5)
  occluded = saved["occlusion"]
  six = test_x[occluded["test_index"]]
  assert test_y[occluded["test_index"]] == 6
  row, col = occluded["most_sensitive_centre"]
  covered = occlusion.occlude(jnp.asarray(six), row, col, 5, 0.5)
  probs = jax.nn.softmax(logits(np.asarray(covered)[None])[0])
  assert occluded["min_true_probability"] == pytest.approx(
    float(probs[6]), rel=1e-4, abs=1e-6
  )
  search = saved["flip_search"]
  assert set(search["flip_fraction"]) == {"5", "28"}
  # Every 28x28 grey patch, placed by hand: the classes it gives.
  centres = np.stack(np.meshgrid(range(28), range(28), indexing="ij"), -1)
  covered = np.stack(
    [_grey_patch(six, r, c, 28, 0.5) for r, c in centres.reshape(-1, 2)]
  )
  labels = np.argmax(logits(covered), -1)
  assert search["flip_fraction"]["28"] == pytest.approx(np.mean(labels != 6))
  assert search["labels"]["28"] == sorted(set(labels[labels != 6].tolist()))

  # The same study through the flags, in the same workdir: it finds its
  # finished training (a config that differed would be refused there) and
  # writes the same bytes.
  first = (tmp_path / "run" / "results.json").read_bytes()
  argv = [f"--workdir={tmp_path / 'run'}", "--features=4,4,4"]
  argv += ["--search_sizes=5,28"]
  argv += [
    f"--{k}={v}"
    for k, v in _TINY.items()
    if k not in ("features", "search_sizes")
  ]
  inspect_cnn.main(["inspect_cnn"], _flag_values(argv))
  assert (tmp_path / "run" / "results.json").read_bytes() == first


def _grey_patch(image, row, col, size, value):
  """`image` with a `size`-pixel square centred at (row, col) set to grey."""
  out = np.array(image)
  top, left = row - size // 2, col - size // 2
  out[max(top, 0) : max(top + size, 0), max(left, 0) : max(left + size, 0)] = (
    value
  )
  return out


@pytest.mark.parametrize(
  ("argv", "message"),
  [
    (["--patch_size=0"], r"flag --patch_size=0: patch_size must be an int in"),
    (["--patch_size=29"], r"patch_size must be an int in \[1, 28\], got 29"),
    (["--shift=-1"], r"shift must be an int in \[0, 27\], got -1"),
    (["--shift=28"], r"shift must be an int in \[0, 27\], got 28"),
    (["--search_sizes=3,0"], r"search_sizes\[1\] must be an int in \[1, 28\]"),
    (["--search_sizes=a"], "--search_sizes must be a comma-separated list"),
    (["--occlusion_digit=10"], r"occlusion_digit must be an int in \[0, 9\]"),
    (["--feature_digits=0,-1"], r"feature_digits\[1\] must be an int in"),
    (["--patch_value=1.5"], "patch_value must be a finite number >= 0 and"),
    (["--features=4,0"], r"features\[1\] must be an int >= 1, got 0"),
    (["--learning_rate=0"], "learning_rate must be a finite number > 0"),
    (["--num_epochs=0"], "num_epochs must be an int >= 1, got 0"),
  ],
)
def test_bad_flags_fail_at_parse_time(argv, message):
  with pytest.raises(flags.IllegalFlagValueError, match=message):
    _flag_values(argv)


def test_tfds_sizes_are_checked_before_training(tmp_path, monkeypatch):
  # A data set of 8x8 images: a 9-pixel patch cannot fit; nothing trains.
  images = np.zeros((20, 8, 8, 1), np.float32)
  labels = np.arange(20) % 10
  monkeypatch.setattr(data, "load_dataset", lambda *a, **k: (images, labels))
  config = inspect_cnn.Config(dataset="tiny", patch_size=9, search_sizes=(3,))
  with pytest.raises(
    ValueError, match=r"patch_size must be an int in \[1, 8\]"
  ):
    inspect_cnn.run(config, tmp_path)
  assert not (tmp_path / "runs").exists()
