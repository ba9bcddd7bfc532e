"""Tests of experiments/shift_equivariance.py, the per-layer shift study."""

import json

import numpy as np
import pytest
from absl import flags

from equivlab import data, train
from experiments import shift_equivariance


def test_smoke_through_the_flags_measures_the_trained_model(tmp_path, capsys):
  flag_values = flags.FlagValues()
  holders = shift_equivariance.define_flags(flag_values)
  flag_values(
    [
      "shift_equivariance",
      f"--workdir={tmp_path}",
      "--paddings=CIRCULAR",
      "--shifts=0:2,0:1",
      "--num_epochs=1",
      "--batch_size=8",
      "--num_images=6",
      "--features=2,3",
      "--dense_features=4",
      "--train_limit=16",
      "--test_limit=8",
      "--num_devices=1",
      "--noprogress",
    ]
  )
  shift_equivariance.main(["shift_equivariance"], holders)
  saved = json.loads((tmp_path / "results.json").read_text())
  assert (tmp_path / "shift_equivariance.png").stat().st_size > 1000
  assert "| CIRCULAR" in capsys.readouterr().out
  entry = saved["models"]["CIRCULAR"]
  assert sorted(entry["shifts"]) == ["0,1", "0,2"]
  # Recompute from the trained run's variables, by hand.
  run_config, variables = train.load_variables(tmp_path / "runs/CIRCULAR/seed0")
  model = train.build_model(run_config)
  x, y = data.load_dataset("embedded", "test")
  x, y = x[:6], y[:6]
  logits = np.asarray(model.apply(variables, x), np.float64)
  assert entry["accuracy"] == np.mean(np.argmax(logits, -1) == y)
  metrics = json.loads(
    (tmp_path / "runs/CIRCULAR/seed0/metrics.jsonl")
    .read_text()
    .splitlines()[-1]
  )
  assert entry["test_accuracy"] == metrics["test_accuracy"]
  for key, shift in (("0,2", (0, 2)), ("0,1", (0, 1))):
    moved = np.asarray(model.apply(variables, np.roll(x, shift, (1, 2))))
    np.testing.assert_allclose(
      entry["shifts"][key]["logits"]["error"],
      np.linalg.norm(moved - logits) / np.linalg.norm(logits),
      rtol=1e-4,
    )
  assert entry["shifts"]["0,2"]["conv1"]["error"] < 1e-5
  # The same command again (it resumes the finished run): the same bytes.
  first = (tmp_path / "results.json").read_bytes()
  shift_equivariance.run(holders.config(), tmp_path)
  assert (tmp_path / "results.json").read_bytes() == first


@pytest.mark.parametrize(
  ("field", "value", "message"),
  [
    ("features", (2, 2, 2), "features must have two entries"),
    ("shifts", ("1",), "shifts must be 'dy:dx' with integers"),
    ("shifts", (), "shifts must hold at least one"),
    ("paddings", ("REFLECT",), r"paddings must be distinct names .*REFLECT"),
    ("num_epochs", 0, "num_epochs must be an int >= 1"),
    ("num_images", 0, "num_images must be an int >= 1"),
    ("learning_rate", -1.0, "learning_rate must be a finite number > 0"),
  ],
)
def test_bad_settings_are_named(field, value, message):
  with pytest.raises(ValueError, match=message):
    shift_equivariance.Config(**{field: value})


@pytest.mark.parametrize(
  ("argv", "message"),
  [
    (["--shifts=1"], "flag --shifts=.*shifts must be 'dy:dx'"),
    (["--features=2,2,2"], "features must have two entries"),
    (["--paddings=REFLECT"], r"paddings must be distinct names .*REFLECT"),
    (["--num_epochs=0"], "flag --num_epochs=0: num_epochs must be an int"),
  ],
)
def test_bad_flags_are_flag_errors(argv, message):
  flag_values = flags.FlagValues()
  shift_equivariance.define_flags(flag_values)
  with pytest.raises(flags.IllegalFlagValueError, match=message):
    flag_values(["shift_equivariance", *argv])
