"""Tests of experiments/adversarial_patch.py on tiny settings."""

import dataclasses
import json

import numpy as np
import pytest
from absl import flags

from equivlab import data, train
from experiments import adversarial_patch

# The CNN after one epoch on 512 digits (most test 6s right), small patches
# from few positions and steps.
_TINY = dict(
  models=("cnn",),
  num_epochs=1,
  batch_size=32,
  train_limit=512,
  test_limit=100,
  max_size=8,
  grid=2,
  num_salient=2,
  num_steps=6,
  step_size=0.25,
  num_devices=1,
  progress=False,
)


def _flag_values(argv):
  flag_values = flags.FlagValues()
  holders = adversarial_patch.define_flags(flag_values)
  flag_values(["adversarial_patch", *argv])
  return holders


def test_smoke_patches_flip_stay_in_range_and_in_their_box(tmp_path, capsys):
  config = adversarial_patch.Config(**_TINY)
  results = adversarial_patch.run(config, tmp_path / "run")
  saved = json.loads((tmp_path / "run" / "results.json").read_text())
  assert saved["table"] == results["table"]
  for name in ("adversarial_cnn", "adversarial_sizes"):
    assert (tmp_path / "run" / f"{name}.png").stat().st_size > 1000
  assert "| cnn" in capsys.readouterr().out

  # The trained CNN again (its run resumes at the end, no training).
  base = adversarial_patch.base_config(config)
  result = train.train_and_evaluate(
    dataclasses.replace(base, model="cnn", seed=0),
    tmp_path / "run" / "runs" / "cnn" / "seed0",
  )
  test_x, test_y = data.load_dataset("embedded", "test")
  image = test_x[saved["test_index"]]
  assert test_y[saved["test_index"]] == 6
  assert np.argmax(result.logits(image[None])) == 6
  record = saved["models"]["cnn"]
  assert record["test_accuracy"] == result["test_accuracy"]
  patched = np.load(tmp_path / "run" / "patches.npz")
  found = {int(t): r for t, r in record["optimised"].items() if r["found"]}
  assert found, record["optimised"]  # The tiny settings flip it.
  assert set(found) <= set(range(10)) - {6}
  assert {f"cnn_to_{t}" for t in found} == set(patched.files)
  for target, patch in found.items():
    size, row, col = patch["size"], patch["row"], patch["col"]
    new = patched[f"cnn_to_{target}"]
    assert np.argmax(result.logits(new[None])) == target
    box = np.zeros((28, 28), bool)
    box[row : row + size, col : col + size] = True
    np.testing.assert_array_equal(new[~box], image[~box])
    assert 0.0 <= new[box].min() and new[box].max() <= 1.0
    assert patch["tried"][str(size)] is True
    if size > 1:
      assert patch["tried"][str(size - 1)] is False
  # Every grey side's classes, and the smallest side per class from them.
  grey = record["grey_search"]
  for target, side in record["grey_sides"].items():
    assert int(target) in grey["labels"][str(side)]
    assert all(
      int(target) not in grey["labels"][str(s)] for s in range(1, side)
    )

  # The same command through the flags, on the same workdir (the run
  # resumes at its end): the same bytes.
  before = (tmp_path / "run" / "results.json").read_bytes()
  argv = [f"--workdir={tmp_path / 'run'}", "--models=cnn"]
  argv += [f"--{k}={v}" for k, v in _TINY.items() if k != "models"]
  adversarial_patch.main(["adversarial_patch"], _flag_values(argv))
  assert (tmp_path / "run" / "results.json").read_bytes() == before


@pytest.mark.parametrize(
  ("argv", "message"),
  [
    (["--max_size=0"], r"max_size must be an int in \[1, 28\], got 0"),
    (["--max_size=29"], r"max_size must be an int in \[1, 28\], got 29"),
    (["--digit=10"], r"digit must be an int in \[0, 9\], got 10"),
    (["--step_size=0"], "step_size must be a finite number > 0 and <= 1"),
    (["--step_size=1.5"], "step_size must be a finite number > 0 and <= 1"),
    (["--models=vit"], r"models must be distinct names .*\['vit'\]"),
    (["--grid=0"], "grid must be an int >= 1, got 0"),
    (["--num_salient=-1"], "num_salient must be an int >= 0, got -1"),
    (["--num_steps=0"], "num_steps must be an int >= 1, got 0"),
    (["--patch_value=2"], "patch_value must be a finite number >= 0 and"),
  ],
)
def test_bad_flags_fail_at_parse_time(argv, message):
  with pytest.raises(flags.IllegalFlagValueError, match=message):
    _flag_values(argv)
