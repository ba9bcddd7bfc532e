"""Tests of experiments/rnn_memory.py, the lag sweep over RNN kinds."""

import json

import jax
import numpy as np
import pytest
from absl import flags

from equivlab import training
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
  """Counts calls of train_rnn; raises at call number `fail_at`."""
  calls = []
  train_rnn = rnn_memory.train_rnn

  def counted(key, name, lag, config):
    calls.append((name, lag))
    if len(calls) == fail_at:
      raise KeyboardInterrupt("killed")
    return train_rnn(key, name, lag, config)

  monkeypatch.setattr(rnn_memory, "train_rnn", counted)
  return calls


def test_make_batch_puts_the_label_first():
  xs, labels = rnn_memory.make_batch(jax.random.key(0), 8, 5, 3, 2)
  assert xs.shape == (8, 6, 5)
  np.testing.assert_array_equal(np.argmax(xs[:, 0], axis=1), labels)
  assert np.all(np.argmax(xs[:, 1:], axis=2) >= 3)  # distractors only


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


def _numpy_elman(params, xs):
  """Hidden states [B, T, H] and last logits [B, K] of an Elman net."""
  cell = {k: np.asarray(v, np.float64) for k, v in params["cell"].items()}
  h = np.zeros((xs.shape[0], cell["W_hh"].shape[0]))
  hs = []
  for t in range(xs.shape[1]):
    h = np.tanh(xs[:, t] @ cell["W_xh"].T + h @ cell["W_hh"].T + cell["b_h"])
    hs.append(h)
  logits = h @ np.asarray(params["W_out"]).T + np.asarray(params["b_out"])
  return np.stack(hs, axis=1), logits, cell


def test_logits_and_accuracy_match_a_numpy_elman():
  params = rnn_memory._init_model(jax.random.key(1), "elman", 6, 5, 3)
  xs, labels = rnn_memory.make_batch(jax.random.key(2), 40, 4, 3, 3)
  _, logits, _ = _numpy_elman(params, np.asarray(xs, np.float64))
  np.testing.assert_allclose(
    rnn_memory.final_logits("elman", params, xs), logits, rtol=1e-5, atol=1e-6
  )
  expected = np.mean(np.argmax(logits, axis=1) == np.asarray(labels))
  assert rnn_memory.accuracy("elman", params, xs, labels) == expected


def test_gradient_profile_matches_a_hand_written_backward_pass():
  config = rnn_memory.Config(
    num_symbols=3,
    num_distractors=2,
    **{k: v for k, v in _TINY.items() if k != "models"},
  )
  params = rnn_memory._init_model(jax.random.key(3), "elman", 5, 4, 3)
  key, lag = jax.random.key(4), 6
  profile = rnn_memory.gradient_profile("elman", params, key, lag, config)
  xs, labels = rnn_memory._batch(config, key, config.grad_probe_size, lag)
  hs, logits, cell = _numpy_elman(params, np.asarray(xs, np.float64))
  # dL/dh_T = W_out^T (softmax - onehot); dL/dh_{t-1} = W_hh^T (dL/dh_t *
  # (1 - h_t^2)).
  p = np.exp(logits - logits.max(1, keepdims=True))
  p /= p.sum(1, keepdims=True)
  p[np.arange(len(labels)), np.asarray(labels)] -= 1
  grad = p @ np.asarray(params["W_out"], np.float64)
  norms = []
  for t in range(lag, -1, -1):
    norms.append(np.linalg.norm(grad, axis=1))
    grad = (grad * (1 - hs[:, t] ** 2)) @ cell["W_hh"]
  np.testing.assert_allclose(profile, np.mean(norms, axis=1), rtol=1e-4)


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
