"""Tests of experiments/shifted_digits.py on tiny settings."""

import json

import numpy as np
import pytest
from absl import flags

from experiments import shifted_digits

# Two seeds of a small MLP for one epoch on a few dozen digits.
_TINY = dict(
  models=("mlp",),
  max_shift=2,
  num_seeds=2,
  seed=5,
  num_epochs=1,
  batch_size=16,
  train_limit=64,
  test_limit=24,
  num_examples=3,
  num_devices=1,
  progress=False,
)


def _flag_values(argv):
  flag_values = flags.FlagValues()
  holders = shifted_digits.define_flags(flag_values)
  flag_values(["shifted_digits", *argv])
  return holders


def test_run_and_flags_write_the_same_checked_results(tmp_path, capsys):
  config = shifted_digits.Config(**_TINY)
  results = shifted_digits.run(config, tmp_path / "run")
  saved = json.loads((tmp_path / "run" / "results.json").read_text())
  assert saved["table"] == results["table"]
  assert [(r["model"], r["seed"]) for r in saved["runs"]] == [
    ("mlp", 5),
    ("mlp", 6),
  ]
  for record in saved["runs"]:
    # The study's own accuracies against the engine's evaluation.
    final = record["history"][-1]
    assert record["test_accuracy"] == pytest.approx(final["test_accuracy"])
    assert record["shifted_accuracy"] == pytest.approx(
      final["embedded_shift2/test_accuracy"]
    )
    assert record["sweep"][0] == pytest.approx(record["test_accuracy"])
    assert len(record["sweep"]) == 3
  (row,) = saved["rows"]
  clean = [r["test_accuracy"] for r in saved["runs"]]
  shifted = [r["shifted_accuracy"] for r in saved["runs"]]
  assert row["test_acc_mean"] == pytest.approx(np.mean(clean))
  assert row["test_acc_std"] == pytest.approx(np.std(clean, ddof=1))
  assert row["shifted_acc_std"] == pytest.approx(np.std(shifted, ddof=1))
  assert row["drop_points"] == pytest.approx(
    100 * (np.mean(clean) - np.mean(shifted))
  )
  assert "sample standard deviation over 2 seeds" in saved["table"]
  for name in ("accuracy", "shift_sweep", "curves", "examples"):
    assert (tmp_path / "run" / f"{name}.png").stat().st_size > 1000
  assert "| mlp" in capsys.readouterr().out

  # The same study through the flags, in the same workdir: it finds its
  # finished runs (a config that differed would be refused there) and
  # writes the same bytes.
  first = (tmp_path / "run" / "results.json").read_bytes()
  argv = [f"--workdir={tmp_path / 'run'}", "--models=mlp"]
  argv += [f"--{k}={v}" for k, v in _TINY.items() if k != "models"]
  shifted_digits.main(["shifted_digits"], _flag_values(argv))
  assert (tmp_path / "run" / "results.json").read_bytes() == first


def test_variants_train_with_their_overrides(tmp_path):
  models = ("mlp+shift_aug", "mlp_wide")
  config = shifted_digits.Config(
    **{**_TINY, "models": models, "num_seeds": 1, "max_shift": 3}
  )
  results = shifted_digits.run(config, tmp_path)
  rows = {r["model"]: r for r in results["rows"]}
  # 784-1024-1024-10 against the default 784-256-256-10.
  assert rows["mlp_wide"]["params"] == 784 * 1024 + 1024 * 1024 + 10250 + 2048
  saved = json.loads(
    (tmp_path / "runs" / "mlp+shift_aug" / "seed5" / "config.json").read_text()
  )
  assert saved["model"] == "mlp"
  assert (saved["augment"], saved["max_shift"]) == ("shift", 3)


def test_circular_gap_models_ignore_shifts_of_digits_inside_the_frame(
  tmp_path,
):
  # Exact invariance to circular shifts; the embedded digits have empty
  # margins, so zero-filled shifts of up to 2 pixels are circular shifts
  # and every point of the sweep is the same accuracy.
  # (p4cnn_gap is the same p4 stack with its group axis pooled too.)
  models = ("cnn_gap", "p4cnn_gap+orientation")
  settings = {
    **_TINY,
    "models": models,
    "num_seeds": 1,
    "train_limit": 32,
    "test_limit": 16,
  }
  results = shifted_digits.run(shifted_digits.Config(**settings), tmp_path)
  for record in results["runs"]:
    sweep = record["sweep"]
    assert sweep == [sweep[0]] * 3, (record["model"], sweep)
    assert record["shifted_accuracy"] == record["test_accuracy"]


@pytest.mark.parametrize(
  ("argv", "message"),
  [
    (["--models=mlp,vgg"], r"models must be distinct names .*unknown: \['vgg'"),
    (["--models=mlp,mlp"], "models must be distinct names"),
    (["--max_shift=-1"], "flag --max_shift=-1: max_shift must be an int in"),
    (["--max_shift=14"], r"max_shift must be an int in \[0, 13\], got 14"),
    (["--num_seeds=0"], "num_seeds must be an int >= 1, got 0"),
    (["--num_epochs=0"], "num_epochs must be an int >= 1, got 0"),
    (["--num_examples=0"], "num_examples must be an int >= 1, got 0"),
    (["--test_limit=0"], "test_limit must be an int >= 1 or None, got 0"),
    (["--learning_rate=nan"], "learning_rate must be a finite number > 0"),
    (["--schedule=linear"], "schedule must be one of"),
  ],
)
def test_bad_flags_are_flag_errors(argv, message):
  with pytest.raises(flags.IllegalFlagValueError, match=message):
    _flag_values(argv)


def test_missing_tfds_dataset_fails_before_training(tmp_path):
  config = shifted_digits.Config(
    dataset="mnist", data_dir=str(tmp_path / "tfds")
  )
  with pytest.raises(FileNotFoundError):
    shifted_digits.run(config, tmp_path / "work")
  assert not (tmp_path / "work" / "runs").exists()
