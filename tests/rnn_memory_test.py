"""Tests of experiments/rnn_memory.py, the lag sweep over RNN kinds."""

import json

import numpy as np
import pytest
from absl import flags

from equivlab import training
from equivlab.rnn import tasks
from experiments import rnn_memory

_TINY = dict(
  lags=(3,),
  models=("lstm",),
  hidden_size=4,
  batch_size=8,
  num_steps=5,
  esn_size=8,
  esn_train_size=16,
  esn_readout_steps=5,
  eval_size=16,
  grad_lag=3,
  grad_probe_size=2,
)


def _flag_values(*argv):
  flag_values = flags.FlagValues()
  holders = rnn_memory.define_flags(flag_values)
  flag_values(["rnn_memory", *argv])
  return holders


def _counting(monkeypatch, fail_at=None):
  """Counts trained networks; raises at call number `fail_at`."""
  calls = []
  train_classifier = tasks.train_classifier

  def counted(key, name, task, lag, **training):
    calls.append((name, lag))
    if len(calls) == fail_at:
      raise KeyboardInterrupt("killed")
    return train_classifier(key, name, task, lag, **training)

  monkeypatch.setattr(tasks, "train_classifier", counted)
  return calls


def test_smoke_through_run(tmp_path, capsys):
  config = rnn_memory.Config(**_TINY)
  results = rnn_memory.run(config, tmp_path)
  saved = json.loads((tmp_path / "results.json").read_text())
  assert saved["table"] == results["table"]
  assert saved["lags"] == [3] and saved["chance"] == 0.25
  assert sorted(saved["accuracy"]) == ["esn_gradient", "esn_ridge", "lstm"]
  for accs in saved["accuracy"].values():
    # An accuracy on 16 sequences is a count of 16ths.
    assert len(accs) == 1 and 0.0 <= accs[0] <= 1.0
    assert accs[0] * 16 == int(accs[0] * 16)
  record = json.loads((tmp_path / "runs/lag3/lstm.json").read_text())
  assert record["accuracy"] == saved["accuracy"]["lstm"][0]
  assert saved["grad_lag"] == 3
  for stage in ("init", "trained"):
    norms = saved["grad_norms"][stage]["lstm"]
    assert norms == record["grad_norms"][stage]
    assert len(norms) == 4 and all(np.isfinite(norms)) and min(norms) > 0
  for name in ("accuracy_vs_lag.png", "grad_norm_vs_distance.png"):
    assert (tmp_path / name).stat().st_size > 1000
  out = capsys.readouterr().out
  assert "| lag | LSTM" in out and "| 3   |" in out
  assert "chance 0.250" in out


def test_an_interrupted_sweep_resumes_without_recomputing(
  tmp_path, monkeypatch
):
  config = rnn_memory.Config(**(_TINY | {"models": ("elman", "lstm")}))
  calls = _counting(monkeypatch, fail_at=2)
  with pytest.raises(KeyboardInterrupt):
    rnn_memory.run(config, tmp_path / "killed")
  assert (tmp_path / "killed/runs/lag3/elman.json").exists()
  assert not (tmp_path / "killed/runs/lag3/lstm.json").exists()
  assert not (tmp_path / "killed/results.json").exists()

  calls = _counting(monkeypatch)
  rnn_memory.run(config, tmp_path / "killed")
  assert calls == [("lstm", 3)]  # The finished Elman run is not redone.
  rnn_memory.run(config, tmp_path / "fresh")
  first, second = (
    (tmp_path / n / "results.json").read_bytes() for n in ("killed", "fresh")
  )
  assert first == second  # Resumed, or not: the same bytes.


def test_a_longer_sweep_reuses_the_finished_lags(tmp_path, monkeypatch):
  config = rnn_memory.Config(**_TINY)
  rnn_memory.run(config, tmp_path)
  record = tmp_path / "runs/lag3/lstm.json"
  saved = json.loads(record.read_text())
  saved["accuracy"] = 0.0625  # Marks the record: the rerun must read it.
  record.write_text(json.dumps(saved))
  calls = _counting(monkeypatch)
  results = rnn_memory.run(
    rnn_memory.Config(**(_TINY | {"lags": (3, 2)})), tmp_path
  )
  assert calls == [("lstm", 2)]
  assert results["accuracy"]["lstm"][0] == 0.0625


def test_an_unreadable_record_is_run_again(tmp_path, monkeypatch):
  config = rnn_memory.Config(**_TINY)
  rnn_memory.run(config, tmp_path)
  (tmp_path / "runs/lag3/lstm.json").write_text('{"accuracy": 0.')
  calls = _counting(monkeypatch)
  rnn_memory.run(config, tmp_path)
  assert calls == [("lstm", 3)]


def test_a_workdir_of_other_settings_is_refused(tmp_path):
  rnn_memory.run(rnn_memory.Config(**_TINY), tmp_path)
  other = rnn_memory.Config(**(_TINY | {"num_steps": 6}))
  with pytest.raises(ValueError, match="num_steps: saved 5 vs now 6"):
    rnn_memory.run(other, tmp_path)


def test_smoke_through_the_flags(tmp_path, capsys):
  holders = _flag_values(
    f"--workdir={tmp_path}",
    "--lags=2",
    "--models=gru",
    "--hidden_size=3",
    "--batch_size=4",
    "--num_steps=2",
    "--esn_size=4",
    "--esn_train_size=8",
    "--esn_readout_steps=2",
    "--eval_size=8",
    "--grad_probe_size=2",
  )
  assert holders.config().models == ("gru",)
  rnn_memory.main(["rnn_memory"], holders)
  saved = json.loads((tmp_path / "results.json").read_text())
  assert saved["grad_lag"] == 2 and list(saved["grad_norms"]["init"]) == ["gru"]
  assert "| lag | GRU" in capsys.readouterr().out


def test_default_flags_are_the_default_config():
  holders = _flag_values()
  assert holders.config() == rnn_memory.Config()
  assert holders.workdir == "runs/rnn_memory"


@pytest.mark.parametrize(
  ("argv", "message"),
  [
    (["--lags=-1"], r"lags\[0\] must be an int >= 1, got -1"),
    (["--lags=2,x"], "--lags must be a comma-separated list of ints"),
    (["--lags=2,2"], r"lags must be distinct, got \[2, 2\]"),
    (["--models=rnn"], "models must be distinct names from"),
    (["--num_symbols=1"], "num_symbols must be an int >= 2, got 1"),
    (["--num_steps=0"], "num_steps must be an int >= 1, got 0"),
    (["--learning_rate=nan"], "learning_rate must be a finite number > 0"),
    (["--esn_radius=0"], "esn_radius must be a finite number > 0"),
    (["--ridge_l2=-1"], "ridge_l2 must be a finite number >= 0"),
    (["--seed=-2"], "seed must be an int >= 0, got -2"),
  ],
)
def test_bad_flags_are_flag_errors_naming_the_flag(argv, message):
  with pytest.raises(flags.IllegalFlagValueError, match=message):
    _flag_values(*argv)


def test_nearest_grad_lag():
  config = rnn_memory.Config(lags=(2, 10, 30), grad_lag=20)
  assert config.nearest_grad_lag == 10  # A tie goes to the smaller lag.
  assert rnn_memory.Config(lags=(5, 80), grad_lag=40).nearest_grad_lag == 5


def test_a_workdir_in_use_is_refused(tmp_path):
  with training.WorkdirLock(tmp_path):
    with pytest.raises(training.WorkdirInUseError, match="in use by"):
      rnn_memory.run(rnn_memory.Config(**_TINY), tmp_path)


def test_a_workdir_that_is_a_file_is_one_clear_error(tmp_path):
  (tmp_path / "file").write_text("")
  with pytest.raises(OSError, match="is a file, not a directory"):
    rnn_memory.run(rnn_memory.Config(**_TINY), tmp_path / "file")
