"""Tests of equivlab/rnn/tasks.py, the delayed-recall task and its probes."""

import jax
import numpy as np
import pytest

from equivlab.rnn import tasks


def test_a_batch_puts_the_label_first():
  xs, labels = tasks.RecallTask(3, 2).batch(jax.random.key(0), 8, 5)
  assert xs.shape == (8, 6, 5)
  np.testing.assert_array_equal(np.argmax(xs[:, 0], axis=1), labels)
  assert np.all(np.argmax(xs[:, 1:], axis=2) >= 3)  # distractors only


def test_bad_task_settings_name_the_field():
  with pytest.raises(ValueError, match="num_symbols must be an int >= 2"):
    tasks.RecallTask(num_symbols=1)
  with pytest.raises(ValueError, match="num_distractors must be an int >= 1"):
    tasks.RecallTask(num_distractors=0)


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
  params = tasks.init_classifier(jax.random.key(1), "elman", 6, 5, 3)
  xs, labels = tasks.RecallTask(3, 3).batch(jax.random.key(2), 40, 4)
  _, logits, _ = _numpy_elman(params, np.asarray(xs, np.float64))
  np.testing.assert_allclose(
    tasks.final_logits("elman", params, xs), logits, rtol=1e-5, atol=1e-6
  )
  expected = np.mean(np.argmax(logits, axis=1) == np.asarray(labels))
  assert tasks.accuracy("elman", params, xs, labels) == expected


def test_gradient_profile_matches_a_hand_written_backward_pass():
  params = tasks.init_classifier(jax.random.key(3), "elman", 5, 4, 3)
  lag = 6
  xs, labels = tasks.RecallTask(3, 2).batch(jax.random.key(4), 2, lag)
  profile = tasks.gradient_profile("elman", params, xs, labels)
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


def test_training_lowers_the_loss_and_returns_the_initial_params():
  task = tasks.RecallTask(2, 1)
  params0, params, losses = tasks.train_classifier(
    jax.random.key(0), "gru", task, 2, hidden_size=8, batch_size=32,
    num_steps=60, learning_rate=1e-2, clip_norm=1.0,
  )  # fmt: skip
  assert losses.shape == (60,)
  assert float(losses[-10:].mean()) < float(losses[:10].mean())
  xs, labels = task.batch(jax.random.key(9), 64, 2)
  assert tasks.accuracy("gru", params, xs, labels) > tasks.accuracy(
    "gru", params0, xs, labels
  )


def test_an_echo_state_net_recalls_a_short_lag():
  task = tasks.RecallTask(2, 1)
  eval_batch = task.batch(jax.random.key(1), 64, 1)
  out = tasks.esn_recall(
    jax.random.key(0), task, 1, eval_batch, size=32, spectral_radius=0.9,
    input_scale=0.5, train_size=256, readout_steps=200, ridge_l2=1e-4,
  )  # fmt: skip
  assert sorted(out) == ["esn_gradient", "esn_ridge"]
  assert out["esn_ridge"] > 0.9  # Chance is 0.5.
  assert out["esn_ridge"] * 64 == int(out["esn_ridge"] * 64)


def test_measure_records_accuracy_loss_and_both_profiles():
  task = tasks.RecallTask(2, 1)
  eval_batch = task.batch(jax.random.key(1), 16, 3)
  probe = task.batch(jax.random.key(2), 4, 3)
  record = tasks.measure(
    jax.random.key(0), "elman", task, 3, eval_batch, probe, hidden_size=4,
    batch_size=8, num_steps=25, learning_rate=1e-2, clip_norm=1.0,
  )  # fmt: skip
  params0, params, losses = tasks.train_classifier(
    jax.random.key(0), "elman", task, 3, hidden_size=4, batch_size=8,
    num_steps=25, learning_rate=1e-2, clip_norm=1.0,
  )  # fmt: skip
  assert record["accuracy"] == tasks.accuracy("elman", params, *eval_batch)
  assert record["final_train_loss"] == pytest.approx(float(losses[-20:].mean()))
  np.testing.assert_allclose(
    record["grad_norms"]["init"],
    tasks.gradient_profile("elman", params0, *probe),
    rtol=1e-6,
  )
  assert len(record["grad_norms"]["trained"]) == 4


@pytest.mark.parametrize(
  ("settings", "message"),
  [
    (dict(num_steps=0), "num_steps must be an int >= 1, got 0"),
    (dict(hidden_size=2.5), "hidden_size must be an int"),
    (dict(learning_rate=0.0), "learning_rate must be a finite number > 0"),
    (dict(cell="rnn"), "rnn"),
    (dict(lag=-1), "lag must be an int >= 0, got -1"),
  ],
)
def test_bad_training_settings_name_the_argument(settings, message):
  kwargs = dict(
    cell="gru", lag=2, hidden_size=4, batch_size=4, num_steps=2,
    learning_rate=1e-2, clip_norm=1.0,
  ) | settings  # fmt: skip
  cell, lag = kwargs.pop("cell"), kwargs.pop("lag")
  with pytest.raises((ValueError, TypeError), match=message):
    tasks.train_classifier(
      jax.random.key(0), cell, tasks.RecallTask(), lag, **kwargs
    )


def test_bad_batch_sizes_name_the_argument():
  with pytest.raises(ValueError, match="size must be an int >= 1, got 0"):
    tasks.RecallTask().batch(jax.random.key(0), 0, 3)
