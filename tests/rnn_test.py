"""Tests of equivlab.rnn: cells, the scanned unroll, BPTT and TBPTT."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.experimental import checkify

from equivlab import rnn
from equivlab.fundamentals import gradcheck


def _problem(seed, t, d, h, k, batch=None, dtype=np.float32):
  """Random Elman parameters and one sequence (or a batch), via NumPy.

  NumPy keeps test set-up free of XLA compiles (eager jax.random would
  compile each op for each new shape).
  """
  rng = np.random.default_rng(seed)
  normal = lambda *shape: rng.normal(size=shape).astype(dtype)
  params = {
    "W_xh": normal(h, d) / np.sqrt(d),
    "W_hh": 1.2 * normal(h, h) / np.sqrt(h),
    "b_h": 0.1 * normal(h),
    "W_hz": normal(k, h) / np.sqrt(h),
    "b_z": 0.1 * normal(k),
  }
  lead = (t,) if batch is None else (batch, t)
  xs = normal(*lead, d)
  ys = rng.integers(0, k, size=lead).astype(np.int32)
  h0 = 0.5 * normal(*lead[:-1], h)
  return jax.tree.map(jnp.asarray, (params, xs, ys, h0))


def _cell_params(name, d, h, seed=0):
  """Random parameters shaped like `get_cell(name).init`'s, via NumPy."""
  rng = np.random.default_rng(seed)
  shapes = jax.eval_shape(
    lambda k: rnn.get_cell(name).init(k, d, h), jax.random.key(0)
  )
  return jax.tree.map(
    lambda s: jnp.asarray(0.5 * rng.normal(size=s.shape), jnp.float32), shapes
  )


def _zero_carry(name, h, batch_shape=()):
  zeros = np.zeros((*batch_shape, h), np.float32)
  return rnn.LSTMState(zeros, zeros) if name == "lstm" else zeros


# Jitted once per shape: op-by-op dispatch would compile every primitive.
_bptt = jax.jit(rnn.elman_bptt)
_value_and_grad = jax.jit(jax.value_and_grad(rnn.elman_loss))
_loss = jax.jit(rnn.elman_loss)
_bptt_batch = jax.jit(rnn.elman_bptt_batch)
_value_and_grad_batch = jax.jit(jax.value_and_grad(rnn.elman_loss_batch))
_tbptt_grads = jax.jit(rnn.tbptt_grads, static_argnums=(0, 5))
_elman_tbptt = jax.jit(rnn.elman_tbptt, static_argnums=(4,))


def _assert_tree_allclose(a, b, rtol, atol=0.0):
  jax.tree.map(
    lambda x, y: np.testing.assert_allclose(x, y, rtol=rtol, atol=atol), a, b
  )


# ---------------------------------------------------------------------------
# elman_bptt against autodiff and finite differences.


@pytest.mark.parametrize("t,d,h,k", [(1, 2, 3, 2), (7, 3, 5, 4), (16, 4, 8, 3)])
def test_bptt_equals_autodiff_float32(t, d, h, k):
  params, xs, ys, h0 = _problem(t, t, d, h, k)
  loss, grads = _bptt(params, xs, ys, h0)
  ref_loss, ref = _value_and_grad(params, xs, ys, h0)
  np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
  # atol only guards entries that cancel to ~0 in float32 round-off.
  _assert_tree_allclose(grads, ref, rtol=1e-5, atol=1e-6)
  assert jax.tree.all(jax.tree.map(lambda g: g.dtype == jnp.float32, grads))


@pytest.mark.parametrize("t,d,h,k", [(2, 2, 3, 2), (9, 3, 4, 5)])
def test_bptt_equals_autodiff_and_finite_differences_float64(t, d, h, k):
  with jax.enable_x64(True):
    params, xs, ys, h0 = _problem(10 + t, t, d, h, k, dtype=np.float64)
    loss, grads = _bptt(params, xs, ys, h0)
    ref_loss, ref = _value_and_grad(params, xs, ys, h0)
    assert grads["W_hh"].dtype == jnp.float64
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-10)
    _assert_tree_allclose(grads, ref, rtol=1e-10, atol=1e-13)
    # Central differences (gradient checking) through the shared
    # checker; the quotient's own error, not the gradients', sets the bound.
    bptt_grad = lambda *a: _bptt(*a)[1]
    autodiff_grad = lambda *a: _value_and_grad(*a)[1]
    for grad_fn in (bptt_grad, autodiff_grad):
      err = gradcheck.check_gradients(
        _loss, grad_fn, params, xs, ys, h0, eps=1e-5
      )
      assert err < 1e-6, err


def test_batched_bptt_equals_autodiff_of_batched_loss():
  params, xs, ys, h0 = _problem(3, 5, 3, 4, 3, batch=4)
  loss, grads = _bptt_batch(params, xs, ys, h0)
  ref_loss, ref = _value_and_grad_batch(params, xs, ys, h0)
  np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
  _assert_tree_allclose(grads, ref, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------
# A 2-unit, 3-step fixture computed independently with NumPy loops.


def _numpy_elman(p, xs, ys, h0):
  """The Elman forward and BPTT backward equations, one loop per direction."""
  hs, probs, loss = [h0], [], 0.0
  for x, y in zip(xs, ys, strict=True):
    a = p["W_xh"] @ x + p["W_hh"] @ hs[-1] + p["b_h"]
    hs.append(np.tanh(a))
    o = p["W_hz"] @ hs[-1] + p["b_z"]
    z = np.exp(o - o.max())
    z /= z.sum()
    probs.append(z)
    loss -= np.log(z[y])
  g = {key: np.zeros_like(v) for key, v in p.items()}
  dh_next = np.zeros_like(h0)
  for t in reversed(range(len(xs))):
    do = probs[t].copy()
    do[ys[t]] -= 1.0
    g["W_hz"] += np.outer(do, hs[t + 1])
    g["b_z"] += do
    dh = p["W_hz"].T @ do + dh_next
    da = dh * (1.0 - hs[t + 1] ** 2)
    g["W_xh"] += np.outer(da, xs[t])
    g["W_hh"] += np.outer(da, hs[t])
    g["b_h"] += da
    dh_next = p["W_hh"].T @ da
  return loss, g


_FIXTURE = {
  "W_xh": np.array([[1.0, -0.5], [0.5, 1.0]]),
  "W_hh": np.array([[0.5, -1.0], [1.0, 0.5]]),
  "b_h": np.array([-1.0, 1.0]),
  "W_hz": np.array([[-2.0, 1.0], [-1.0, 0.0]]),
  "b_z": np.array([0.0, 0.0]),
}
_FIX_XS = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
_FIX_YS = np.array([1, 0, 1])
_FIX_H0 = np.zeros(2)


def test_two_unit_fixture_matches_numpy_loops_and_sgd_lowers_loss():
  ref_loss, ref_grads = _numpy_elman(_FIXTURE, _FIX_XS, _FIX_YS, _FIX_H0)
  with jax.enable_x64(True):
    params = jax.tree.map(jnp.asarray, _FIXTURE)
    args = (jnp.asarray(_FIX_XS), jnp.asarray(_FIX_YS), jnp.asarray(_FIX_H0))
    loss, grads = _bptt(params, *args)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-12)
    _assert_tree_allclose(grads, ref_grads, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(_loss(params, *args), ref_loss, rtol=1e-12)

    lr = 0.1
    new = jax.tree.map(lambda p, g: p - lr * g, params, grads)
    assert _loss(new, *args) < loss
    # A gradient step is b - lr * g: it lowers the loss, and the opposite
    # sign, b + lr * g, raises it.
    wrong = dict(params, b_h=params["b_h"] + lr * grads["b_h"])
    assert _loss(wrong, *args) > loss
    right = dict(params, b_h=params["b_h"] - lr * grads["b_h"])
    assert _loss(right, *args) < loss


# ---------------------------------------------------------------------------
# Variable lengths, layouts and reverse.


def test_masked_batch_equals_each_sequence_alone():
  params, xs, ys, h0 = _problem(4, 6, 3, 4, 3, batch=3)
  lengths = jnp.array([6, 2, 4])
  loss, grads = _bptt_batch(params, xs, ys, h0, lengths)
  ref_loss, ref_grads = _value_and_grad_batch(params, xs, ys, h0, lengths)
  alone = [
    _bptt(params, xs[b, :n], ys[b, :n], h0[b])
    for b, n in enumerate(lengths.tolist())
  ]
  sum_loss = sum(a[0] for a in alone)
  sum_grads = jax.tree.map(lambda *g: sum(g), *[a[1] for a in alone])
  np.testing.assert_allclose(loss, sum_loss, rtol=1e-5)
  np.testing.assert_allclose(ref_loss, sum_loss, rtol=1e-5)
  _assert_tree_allclose(grads, sum_grads, rtol=1e-5, atol=1e-6)
  _assert_tree_allclose(ref_grads, sum_grads, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["elman", "lstm", "gru"])
def test_unroll_lengths_return_last_valid_carry_and_mask_outputs(name):
  cell = rnn.get_cell(name)
  params = _cell_params(name, 3, 4)
  xs = np.random.default_rng(5).normal(size=(3, 5, 3)).astype(np.float32)
  lengths = np.array([5, 1, 3])
  carry0 = _zero_carry(name, 4, (3,))
  run = jax.jit(rnn.unroll, static_argnames=("cell_fn", "time_major"))
  carry, outs = run(
    cell.apply, params, xs, carry0, lengths=lengths, time_major=False
  )
  for b, n in enumerate(lengths.tolist()):
    c_b, o_b = run(
      cell.apply, params, xs[b, :n], jax.tree.map(lambda c, b=b: c[b], carry0)
    )
    _assert_tree_allclose(
      jax.tree.map(lambda c, b=b: c[b], carry), c_b, rtol=1e-5, atol=1e-6
    )
    np.testing.assert_allclose(outs[b, :n], o_b, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(outs[b, n:], 0.0)


def test_time_major_batch_major_unroll_factor_and_reverse():
  cell = rnn.get_cell("gru")
  params = _cell_params("gru", 2, 3)
  rng = np.random.default_rng(6)
  xs = rng.normal(size=(4, 6, 2)).astype(np.float32)  # [B, T, D]
  carry0 = _zero_carry("gru", 3, (4,))
  lengths = np.array([6, 3, 1, 5])
  c_bm, o_bm = rnn.unroll(
    cell.apply, params, xs, carry0, lengths=lengths, time_major=False
  )
  c_tm, o_tm = rnn.unroll(
    cell.apply,
    params,
    xs.transpose(1, 0, 2),
    carry0,
    lengths=lengths,
    unroll=4,
  )
  np.testing.assert_allclose(c_bm, c_tm, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(
    o_bm, o_tm.transpose(1, 0, 2), rtol=1e-5, atol=1e-6
  )
  c_rev, o_rev = rnn.unroll(
    cell.apply,
    params,
    xs,
    carry0,
    lengths=lengths,
    time_major=False,
    reverse=True,
  )
  for b, n in enumerate(lengths.tolist()):
    # Reverse reads the valid part backwards: the same as a forward run over
    # the flipped sequence, with the outputs flipped back.
    c_ref, o_ref = rnn.unroll(cell.apply, params, xs[b, :n][::-1], carry0[b])
    np.testing.assert_allclose(c_rev[b], c_ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(o_rev[b, :n], o_ref[::-1], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(o_rev[b, n:], 0.0)


def test_elman_unroll_with_hoisted_inputs_equals_the_generic_unroll():
  params = _cell_params("elman", 3, 4)
  xs = np.random.default_rng(8).normal(size=(3, 5, 3)).astype(np.float32)
  h0 = np.zeros((3, 4), np.float32)
  lengths = np.array([5, 2, 4])
  for kwargs in ({}, {"lengths": lengths, "reverse": True}):
    ref = rnn.unroll(rnn.elman_cell, params, xs, h0, time_major=False, **kwargs)
    got = rnn.elman_unroll(params, xs, h0, time_major=False, **kwargs)
    _assert_tree_allclose(got, ref, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------
# LSTM and GRU against flax on shared weights.


def test_lstm_and_gru_match_flax_cells():
  key = jax.random.key(7)
  d, h = 3, 4
  rng = np.random.default_rng(7)
  x, c0, h0 = (rng.normal(size=(2, n)).astype(np.float32) for n in (d, h, h))

  lstm = nn.LSTMCell(h, bias_init=nn.initializers.normal(1.0))
  variables = lstm.init(key, (c0, h0), x)
  fp = variables["params"]
  gates = ("i", "f", "g", "o")
  ours = {
    "W_x": jnp.concatenate([fp["i" + g]["kernel"].T for g in gates]),
    "W_h": jnp.concatenate([fp["h" + g]["kernel"].T for g in gates]),
    "b": jnp.concatenate([fp["h" + g]["bias"] for g in gates]),
  }
  (c_ref, h_ref), out_ref = lstm.apply(variables, (c0, h0), x)
  carry, out = jax.vmap(rnn.lstm_cell, (None, 0, 0))(
    ours, rnn.LSTMState(c0, h0), x
  )
  np.testing.assert_allclose(carry.c, c_ref, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(carry.h, h_ref, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(out, out_ref, rtol=1e-5, atol=1e-6)

  gru = nn.GRUCell(h, bias_init=nn.initializers.normal(1.0))
  variables = gru.init(key, h0, x)
  fp = variables["params"]
  zeros = jnp.zeros((h,))
  ours = {
    "W_x": jnp.concatenate([fp["i" + g]["kernel"].T for g in "rzn"]),
    "W_h": jnp.concatenate([fp["h" + g]["kernel"].T for g in "rzn"]),
    "b_x": jnp.concatenate([fp["i" + g]["bias"] for g in "rzn"]),
    "b_h": jnp.concatenate([zeros, zeros, fp["hn"]["bias"]]),
  }
  h_ref, _ = gru.apply(variables, h0, x)
  h_new, _ = jax.vmap(rnn.gru_cell, (None, 0, 0))(ours, h0, x)
  np.testing.assert_allclose(h_new, h_ref, rtol=1e-5, atol=1e-6)


def test_flax_wrapper_equals_unroll():
  xs = np.random.default_rng(9).normal(size=(2, 5, 3)).astype(np.float32)
  module = rnn.Recurrent(cell="lstm", hidden_size=4)
  variables = module.init(jax.random.key(0), xs)
  carry, outs = module.apply(variables, xs)
  ref_carry, ref_outs = rnn.unroll(
    rnn.lstm_cell,
    variables["params"]["cell"],
    xs,
    _zero_carry("lstm", 4, (2,)),
    time_major=False,
  )
  np.testing.assert_allclose(outs, ref_outs, rtol=1e-6)
  np.testing.assert_allclose(carry.c, ref_carry.c, rtol=1e-6)


# ---------------------------------------------------------------------------
# Truncated BPTT.


def test_tbptt_with_tau_equal_t_is_full_bptt():
  params, xs, ys, h0 = _problem(11, 8, 3, 4, 3)
  ref_loss, ref = _bptt(params, xs, ys, h0)
  loss, grads, _ = _tbptt_grads(rnn.elman_segment_loss, params, xs, ys, h0, 8)
  np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
  _assert_tree_allclose(grads, ref, rtol=1e-5, atol=1e-6)
  loss, grads = _elman_tbptt(params, xs, ys, h0, 8)
  _assert_tree_allclose(grads, ref, rtol=1e-5, atol=1e-6)


def test_tbptt_with_tau_below_t_is_the_truncated_gradient():
  with jax.enable_x64(True):
    params, xs, ys, h0 = _problem(12, 12, 3, 4, 3, dtype=np.float64)
    tau = 4
    # Hand-built reference: the states at the segment starts come from one
    # full forward pass; each segment is differentiated from its own start
    # as a constant, and the segment gradients are summed.
    np_params = jax.tree.map(np.asarray, params)
    h, starts = np.asarray(h0), []
    for t, x in enumerate(np.asarray(xs)):
      if t % tau == 0:
        starts.append(h)
      h = np.tanh(
        np_params["W_xh"] @ x + np_params["W_hh"] @ h + np_params["b_h"]
      )
    ref_loss, ref = 0.0, jax.tree.map(jnp.zeros_like, params)
    for s, h_start in enumerate(starts):
      seg = slice(s * tau, (s + 1) * tau)
      loss_s, g_s = _value_and_grad(
        params, xs[seg], ys[seg], jnp.asarray(h_start)
      )
      ref_loss += loss_s
      ref = jax.tree.map(jnp.add, ref, g_s)

    loss, grads, h_last = _tbptt_grads(
      rnn.elman_segment_loss, params, xs, ys, h0, tau
    )
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-10)
    _assert_tree_allclose(grads, ref, rtol=1e-10, atol=1e-13)
    np.testing.assert_allclose(h_last, h, rtol=1e-10)
    hand_loss, hand = _elman_tbptt(params, xs, ys, h0, tau)
    np.testing.assert_allclose(hand_loss, ref_loss, rtol=1e-10)
    _assert_tree_allclose(hand, ref, rtol=1e-10, atol=1e-13)
    # The loss is the full one, the gradient is not (W_hh differs).
    full_loss, full = _bptt(params, xs, ys, h0)
    np.testing.assert_allclose(loss, full_loss, rtol=1e-10)
    assert np.max(np.abs(full["W_hh"] - grads["W_hh"])) > 1e-3


def test_tbptt_train_updates_per_segment_and_lowers_loss():
  params, xs, ys, h0 = _problem(13, 12, 3, 8, 3)
  ys = jnp.zeros_like(ys)  # an easy target: always class 0
  optimizer = optax.sgd(0.05)
  opt_state = optimizer.init(params)
  train = jax.jit(
    rnn.tbptt_train, static_argnames=("segment_loss", "optimizer", "tau")
  )
  first = None
  for _ in range(5):
    params, opt_state, losses, _ = train(
      rnn.elman_segment_loss, optimizer, params, opt_state, xs, ys, h0, tau=3
    )
    assert losses.shape == (4,)
    first = losses if first is None else first
  assert jnp.sum(losses) < jnp.sum(first)


def test_tbptt_eager_calls_compile_once_per_shape():
  """The segment loss is traced once per shape, not once per call."""
  traces = []

  def segment_loss(params, xs, ys, h):
    traces.append(xs.shape)
    return rnn.elman_segment_loss(params, xs, ys, h)

  params, xs, ys, h0 = _problem(15, 8, 3, 4, 3)
  optimizer = optax.sgd(0.05)
  opt_state = optimizer.init(params)
  first = rnn.tbptt_grads(segment_loss, params, xs, ys, h0, 2)
  once = len(traces)
  assert once >= 1
  for _ in range(3):
    again = rnn.tbptt_grads(segment_loss, params, xs, ys, h0, 2)
  assert len(traces) == once
  _assert_tree_allclose(again, first, rtol=0)
  # A new shape (here, tau) compiles once more.
  rnn.tbptt_grads(segment_loss, params, xs, ys, h0, 4)
  rnn.tbptt_grads(segment_loss, params, xs, ys, h0, 4)
  assert len(traces) == 2 * once
  traces.clear()
  for _ in range(4):
    params, opt_state, losses, _ = rnn.tbptt_train(
      segment_loss, optimizer, params, opt_state, xs, ys, h0, 2
    )
  assert len(traces) == once and losses.shape == (4,)


def test_tbptt_takes_unhashable_segment_losses():
  class Loss:
    __hash__ = None

    def __call__(self, params, xs, ys, h):
      return rnn.elman_segment_loss(params, xs, ys, h)

  params, xs, ys, h0 = _problem(16, 4, 2, 3, 2)
  loss, _, _ = rnn.tbptt_grads(Loss(), params, xs, ys, h0, 2)
  want, _, _ = rnn.tbptt_grads(rnn.elman_segment_loss, params, xs, ys, h0, 2)
  np.testing.assert_allclose(loss, want, rtol=1e-6)


# ---------------------------------------------------------------------------
# The gradient-flow probe.


def test_carry_gradient_norms_match_autodiff_and_vanish():
  rng = np.random.default_rng(14)
  q, _ = np.linalg.qr(rng.normal(size=(5, 5)))
  params = {
    "W_xh": jnp.asarray(rng.normal(size=(5, 2)), jnp.float32),
    "W_hh": jnp.asarray(0.5 * q, jnp.float32),  # spectral norm 0.5
    "b_h": jnp.zeros((5,)),
  }
  xs = jnp.asarray(rng.normal(size=(10, 2)), jnp.float32)
  h0 = jnp.zeros((5,))
  readout = jnp.asarray(rng.normal(size=(5,)), jnp.float32)
  final_loss = lambda h: jnp.dot(readout, h) ** 2
  norms = jax.jit(rnn.carry_gradient_norms, static_argnums=(0, 4))(
    rnn.elman_cell, params, xs, h0, final_loss
  )
  assert norms.shape == (10,)
  h_states = rnn.unroll(rnn.elman_cell, params, xs, h0)[1]
  for t in (0, 6, 9):
    # dL_T/dh_t by autodiff of the tail of the sequence started at h_t.
    tail = lambda h, t=t: final_loss(
      rnn.unroll(rnn.elman_cell, params, xs[t + 1 :], h)[0] if t < 9 else h
    )
    ref = jax.jit(jax.grad(tail))(h_states[t])
    np.testing.assert_allclose(norms[t], jnp.linalg.norm(ref), rtol=1e-5)
  # ||W_hh|| = 0.5 and |tanh'| <= 1: each step back at least halves it.
  assert np.all(norms[:-1] <= 0.5 * norms[1:] + 1e-7)


# ---------------------------------------------------------------------------
# Bad input: one test per case.


def _good():
  return _problem(16, 4, 3, 2, 3)


def test_rejects_mismatched_input_dim():
  params, xs, ys, h0 = _good()
  with pytest.raises(ValueError, match=r"D = 3"):
    rnn.elman_bptt(params, xs[:, :2], ys, h0)


def test_rejects_mismatched_label_length():
  params, xs, ys, h0 = _good()
  with pytest.raises(ValueError, match=r"ys must be \[T\]"):
    rnn.elman_loss(params, xs, ys[:3], h0)


def test_rejects_mismatched_hidden_state():
  params, xs, ys, h0 = _good()
  with pytest.raises(ValueError, match=r"h0 must have shape \(2,\)"):
    rnn.elman_loss(params, xs, ys, jnp.zeros(3))


def test_rejects_mismatched_params():
  params, xs, ys, h0 = _good()
  bad = dict(params, W_hz=jnp.zeros((3, 5)))
  with pytest.raises(ValueError, match=r"W_hz"):
    rnn.elman_loss(bad, xs, ys, h0)


def test_rejects_float_labels():
  params, xs, ys, h0 = _good()
  with pytest.raises(ValueError, match=r"integer class labels.*float32"):
    rnn.elman_bptt(params, xs, ys.astype(jnp.float32), h0)


def test_rejects_zero_steps():
  params, xs, ys, h0 = _good()
  with pytest.raises(ValueError, match=r"T = 0"):
    rnn.elman_loss(params, xs[:0], ys[:0], h0)
  with pytest.raises(ValueError, match=r"T = 0"):
    rnn.unroll(rnn.elman_cell, params, xs[:0], h0)


def test_rejects_lengths_longer_than_t():
  params, xs, ys, h0 = _problem(17, 4, 3, 2, 3, batch=2)
  with pytest.raises(ValueError, match=r"<= the number of steps T = 4.*5"):
    rnn.elman_bptt_batch(params, xs, ys, h0, jnp.array([4, 5]))
  with pytest.raises(ValueError, match=r"<= the number of steps T = 4"):
    rnn.unroll(
      rnn.elman_cell,
      params,
      xs,
      h0,
      lengths=jnp.array([9, 1]),
      time_major=False,
    )


def test_rejects_lengths_of_the_wrong_shape_or_dtype():
  params, xs, ys, h0 = _problem(18, 4, 3, 2, 3, batch=2)
  with pytest.raises(ValueError, match=r"lengths must have shape \(2,\)"):
    rnn.elman_loss_batch(params, xs, ys, h0, jnp.array([1, 2, 3]))
  with pytest.raises(ValueError, match=r"lengths must be integers"):
    rnn.elman_loss_batch(params, xs, ys, h0, jnp.array([1.0, 2.0]))


def test_rejects_carry_batch_mismatch():
  params, xs, _, h0 = _problem(19, 4, 3, 2, 3, batch=2)
  with pytest.raises(ValueError, match=r"leading batch shape \(2,\)"):
    rnn.unroll(rnn.elman_cell, params, xs, h0[:1], time_major=False)


def test_rejects_tau_not_dividing_t():
  params, xs, ys, h0 = _good()
  with pytest.raises(ValueError, match=r"multiple of tau = 3, got T = 4"):
    rnn.tbptt_grads(rnn.elman_segment_loss, params, xs, ys, h0, 3)


def test_rejects_unknown_cell():
  with pytest.raises(ValueError, match=r"cell must be one of"):
    rnn.get_cell("transformer")


# ---------------------------------------------------------------------------
# Labels outside [0, K): eager errors, padding, the traced contract and the
# checkify path.


@pytest.mark.parametrize("label", [-1, 3, 7])
def test_rejects_out_of_range_labels_naming_label_and_index(label):
  params, xs, ys, h0 = _good()  # K = 3, T = 4
  ys = ys.at[2].set(label)
  pattern = rf"ys must lie in \[0, 3\), got {label} at index 2"
  with pytest.raises(ValueError, match=pattern):
    rnn.elman_loss(params, xs, ys, h0)
  with pytest.raises(ValueError, match=pattern):
    rnn.elman_bptt(params, xs, ys, h0)
  with pytest.raises(ValueError, match=pattern):
    rnn.elman_tbptt(params, xs, ys, h0, 2)
  with pytest.raises(ValueError, match=pattern):
    rnn.elman_segment_loss(params, xs, ys, h0)


def test_batched_forms_reject_out_of_range_labels_with_their_index():
  params, xs, ys, h0 = _problem(20, 4, 3, 2, 3, batch=2)
  ys = ys.at[1, 2].set(-1)
  pattern = r"ys must lie in \[0, 3\), got -1 at index \(1, 2\)"
  for fn in (rnn.elman_loss_batch, rnn.elman_bptt_batch):
    with pytest.raises(ValueError, match=pattern):
      fn(params, xs, ys, h0)
    # Within the valid length the label still counts.
    with pytest.raises(ValueError, match=pattern):
      fn(params, xs, ys, h0, jnp.array([4, 3]))


def test_labels_at_padded_steps_are_ignored_concrete_and_traced():
  params, xs, ys, h0 = _problem(21, 5, 3, 2, 3, batch=3)
  lengths = jnp.array([5, 2, 3])
  # Padding labels of any value, -1 and 99 included, add nothing.
  padded = ys.at[1, 2:].set(-1).at[2, 3:].set(99)
  alone = [
    _bptt(params, xs[b, :n], ys[b, :n], h0[b])
    for b, n in enumerate(lengths.tolist())
  ]
  ref_loss = sum(a[0] for a in alone)
  ref_grads = jax.tree.map(lambda *g: sum(g), *[a[1] for a in alone])
  # Labels and lengths closed over stay concrete inside jit: the eager
  # check runs (and passes); as arguments they are traced.
  concrete = jax.jit(
    lambda p, x, h: rnn.elman_bptt_batch(p, x, padded, h, lengths)
  )
  for loss, grads in (
    concrete(params, xs, h0),
    _bptt_batch(params, xs, padded, h0, lengths),
  ):
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
    _assert_tree_allclose(grads, ref_grads, rtol=1e-5, atol=1e-6)
  loss, grads = _value_and_grad_batch(params, xs, padded, h0, lengths)
  np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
  _assert_tree_allclose(grads, ref_grads, rtol=1e-5, atol=1e-6)
  one = jax.jit(lambda p: rnn.elman_loss(p, xs[1], padded[1], h0[1], length=2))
  np.testing.assert_allclose(one(params), alone[1][0], rtol=1e-5)


def test_traced_out_of_range_labels_give_nan_not_a_wrong_loss():
  # Inside the caller's jit the labels are tracers: no eager check can run.
  # A -1 must not wrap around to class K-1 and give a finite, wrong loss.
  params, xs, ys, h0 = _good()
  for label in (-1, 3):
    bad = ys.at[1].set(label)
    assert np.isnan(_loss(params, xs, bad, h0))
    loss, grads = _bptt(params, xs, bad, h0)
    assert np.isnan(loss)
    assert all(np.isnan(g).all() for g in jax.tree.leaves(grads))
    ref_loss, ref = _value_and_grad(params, xs, bad, h0)
    assert np.isnan(ref_loss)
    assert all(np.isnan(g).all() for g in jax.tree.leaves(ref))
  params, xs, ys, h0 = _problem(22, 4, 3, 2, 3, batch=2)
  bad = ys.at[0, 3].set(-1)
  assert np.isnan(_bptt_batch(params, xs, bad, h0)[0])
  assert np.isnan(_value_and_grad_batch(params, xs, bad, h0)[0])


def _checked(fn, **kwargs):
  """`fn(..., checked=True)` jitted under checkify; raises on a failed check."""
  run = jax.jit(
    checkify.checkify(functools.partial(fn, checked=True, **kwargs))
  )

  def call(*args):
    err, out = run(*args)
    err.throw()
    return out

  return call


def test_checked_path_raises_at_run_time_for_traced_labels():
  params, xs, ys, h0 = _good()
  bad = ys.at[2].set(-1)
  pattern = r"ys must lie in \[0, 3\), got -1 at index 2"
  for fn in (
    _checked(rnn.elman_loss),
    _checked(rnn.elman_bptt),
    _checked(rnn.elman_tbptt, tau=2),
  ):
    with pytest.raises(ValueError, match=pattern):
      fn(params, xs, bad, h0)
  # Good labels: no error and the unchecked value.
  np.testing.assert_allclose(
    _checked(rnn.elman_loss)(params, xs, ys, h0),
    _loss(params, xs, ys, h0),
    rtol=1e-6,
  )
  # The user's own vmap over the one-sequence function.
  params, xs, ys, h0 = _problem(23, 4, 3, 2, 3, batch=2)
  bad = ys.at[1, 3].set(5)
  vmapped = jax.vmap(
    functools.partial(rnn.elman_loss, checked=True), (None, 0, 0, 0)
  )
  err, _ = jax.jit(checkify.checkify(vmapped))(params, xs, bad, h0)
  with pytest.raises(ValueError, match=r"got 5 at index 3"):
    err.throw()
  with pytest.raises(ValueError, match=r"got 5 at index \(1, 3\)"):
    _checked(rnn.elman_bptt_batch)(params, xs, bad, h0)


def test_checked_path_checks_traced_lengths_and_ignores_padding():
  params, xs, ys, h0 = _problem(24, 4, 3, 2, 3, batch=2)
  loss_fn = _checked(rnn.elman_loss_batch)
  with pytest.raises(ValueError, match=r"lengths must lie in \[0, T = 4\], "):
    loss_fn(params, xs, ys, h0, jnp.array([4, 9]))
  padded = ys.at[1, 2:].set(-1)
  np.testing.assert_allclose(
    loss_fn(params, xs, padded, h0, jnp.array([4, 2])),
    rnn.elman_loss_batch(params, xs, ys, h0, jnp.array([4, 2])),
    rtol=1e-5,
  )


def test_checked_must_be_a_static_bool():
  params, xs, ys, h0 = _good()
  with pytest.raises(TypeError, match=r"checked must be a Python bool"):
    jax.jit(rnn.elman_loss)(params, xs, ys, h0, checked=True)
  with pytest.raises(TypeError, match=r"checked must be a Python bool"):
    rnn.elman_bptt(params, xs, ys, h0, checked=1)


def test_value_checks_let_tracers_through_vmap_and_grad():
  params, xs, ys, h0 = _problem(25, 4, 3, 2, 3, batch=3)
  # Under vmap the concrete labels become batch tracers; under grad the
  # parameters are tracers and the labels stay concrete (checked).
  vmapped = jax.jit(
    lambda x, h: jax.vmap(rnn.elman_loss, (None, 0, 0, 0))(params, x, ys, h)
  )
  losses = vmapped(xs, h0)
  grads = jax.jit(lambda p: jax.grad(rnn.elman_loss)(p, xs[0], ys[0], h0[0]))(
    params
  )
  for b in range(3):
    np.testing.assert_allclose(
      losses[b], _loss(params, xs[b], ys[b], h0[b]), rtol=1e-5
    )
  _assert_tree_allclose(
    grads, _bptt(params, xs[0], ys[0], h0[0])[1], rtol=1e-5, atol=1e-6
  )


# ---------------------------------------------------------------------------
# Other bad input, one test per class.


def test_rejects_params_of_the_wrong_kind_keys_or_shapes():
  params, xs, ys, h0 = _good()
  with pytest.raises(TypeError, match=r"params must be a dict.*got list"):
    rnn.elman_loss(list(params.values()), xs, ys, h0)
  missing = {k: v for k, v in params.items() if k != "b_z"}
  with pytest.raises(ValueError, match=r"keys \['W_hh'.*got \['W_hh'"):
    rnn.elman_bptt(missing, xs, ys, h0)
  with pytest.raises(ValueError, match=r"W_hh must be square.*\(2, 3\)"):
    rnn.elman_loss(dict(params, W_hh=jnp.zeros((2, 3))), xs, ys, h0)
  with pytest.raises(ValueError, match=r"params\['b_h'\] must have shape"):
    rnn.elman_loss_batch(
      dict(params, b_h=jnp.zeros(5)), xs[None], ys[None], h0[None]
    )
  with pytest.raises(ValueError, match=r"K >= 1 classes, got \(0, 2\)"):
    rnn.elman_loss(
      dict(params, W_hz=jnp.zeros((0, 2)), b_z=jnp.zeros(0)), xs, ys, h0
    )
  with pytest.raises(ValueError, match=r"keys \['W_hh', 'W_xh', 'b_h'\]"):
    rnn.elman_unroll({"W_xh": params["W_xh"]}, xs, h0)


def test_rejects_h0_of_the_wrong_size_in_every_form():
  params, xs, ys, h0 = _problem(26, 4, 3, 2, 3, batch=2)
  with pytest.raises(ValueError, match=r"h0 must have shape \(2,\), got"):
    rnn.elman_bptt(params, xs[0], ys[0], jnp.zeros(5))
  with pytest.raises(ValueError, match=r"h0 must have shape \(2, 2\), got"):
    rnn.elman_bptt_batch(params, xs, ys, jnp.zeros((2, 5)))
  with pytest.raises(ValueError, match=r"h0 must end in the hidden size H"):
    rnn.elman_unroll(params, xs, jnp.zeros((2, 5)), time_major=False)
  with pytest.raises(ValueError, match=r"h0 must end in H = 2"):
    rnn.elman_segment_loss(params, xs[0], ys[0], jnp.zeros(5))


def test_batched_forms_reject_shapes_that_disagree():
  params, xs, ys, h0 = _problem(27, 4, 3, 2, 3, batch=2)
  with pytest.raises(ValueError, match=r"share the batch size 2, got 1"):
    rnn.elman_loss_batch(params, xs, ys[:1], h0)
  with pytest.raises(ValueError, match=r"ys must be \[B, T\] = \(2, 4\)"):
    rnn.elman_bptt_batch(params, xs, ys[:, :3], h0)
  with pytest.raises(ValueError, match=r"xs \[B, T, D\], ys \[B, T\]"):
    rnn.elman_bptt_batch(params, xs[0], ys, h0)
  with pytest.raises(ValueError, match=r"D = 3 \(from W_xh\)"):
    rnn.elman_loss_batch(params, xs[..., :2], ys, h0)


def test_batched_forms_reject_float_labels():
  params, xs, ys, h0 = _problem(28, 4, 3, 2, 3, batch=2)
  with pytest.raises(ValueError, match=r"integer class labels.*float32"):
    rnn.elman_bptt_batch(params, xs, ys.astype(jnp.float32), h0)
  with pytest.raises(ValueError, match=r"integer class labels.*float32"):
    _elman_tbptt(params, xs[0], ys[0].astype(jnp.float32), h0[0], 2)


def test_rejects_lengths_out_of_range_in_every_form():
  params, xs, ys, h0 = _problem(29, 4, 3, 2, 3, batch=2)
  with pytest.raises(ValueError, match=r"length must be non-negative, got -1"):
    rnn.elman_loss(params, xs[0], ys[0], h0[0], length=-1)
  with pytest.raises(ValueError, match=r"length must be <= .* T = 4.*5"):
    rnn.elman_bptt(params, xs[0], ys[0], h0[0], length=5)
  with pytest.raises(ValueError, match=r"lengths must be non-negative"):
    rnn.elman_bptt_batch(params, xs, ys, h0, jnp.array([-2, 1]))
  with pytest.raises(ValueError, match=r"length must have shape \(\)"):
    rnn.elman_loss(params, xs[0], ys[0], h0[0], length=jnp.array([2]))


@pytest.mark.parametrize(
  "tau,error",
  [(0, ValueError), (-2, ValueError), (2.0, TypeError), (True, TypeError)],
)
def test_rejects_tau_that_is_not_a_positive_int(tau, error):
  params, xs, ys, h0 = _good()
  match = r"tau must be an int >= 1, got"
  with pytest.raises(error, match=match):
    rnn.tbptt_grads(rnn.elman_segment_loss, params, xs, ys, h0, tau)
  with pytest.raises(error, match=match):
    rnn.tbptt_train(
      rnn.elman_segment_loss, optax.sgd(0.1), params, None, xs, ys, h0, tau
    )
  with pytest.raises(error, match=match):
    rnn.elman_tbptt(params, xs, ys, h0, tau)


def test_tbptt_rejects_targets_callables_and_optimizers_of_the_wrong_kind():
  params, xs, ys, h0 = _good()
  with pytest.raises(ValueError, match=r"leading T = 4 of xs, got .*\(3,\)"):
    rnn.tbptt_grads(rnn.elman_segment_loss, params, xs, ys[:3], h0, 2)
  with pytest.raises(TypeError, match=r"segment_loss must be a callable"):
    rnn.tbptt_grads("elman", params, xs, ys, h0, 2)
  with pytest.raises(TypeError, match=r"optimizer must be an optax"):
    rnn.tbptt_train(rnn.elman_segment_loss, 0.1, params, None, xs, ys, h0, 2)


def test_unroll_and_probe_reject_arguments_of_the_wrong_kind():
  params, xs, _, h0 = _good()
  with pytest.raises(TypeError, match=r"cell_fn must be a callable"):
    rnn.unroll("elman", params, xs, h0)
  with pytest.raises(ValueError, match=r"unroll must be an int >= 1, got 0"):
    rnn.unroll(rnn.elman_cell, params, xs, h0, unroll=0)
  with pytest.raises(TypeError, match=r"final_loss must be callable"):
    rnn.carry_gradient_norms(rnn.elman_cell, params, xs, h0, None)
  with pytest.raises(ValueError, match=r"xs must be \[T, D\] with T > 0"):
    rnn.carry_gradient_norms(rnn.elman_cell, params, xs[0, 0], h0, jnp.sum)
  with pytest.raises(TypeError, match=r"num_steps must be an int >= 0"):
    rnn.sequence_mask(jnp.array([1, 2]), 3.0)


@pytest.mark.parametrize("name", ["elman", "lstm", "gru"])
def test_initialisers_reject_bad_sizes(name):
  init = rnn.get_cell(name).init
  with pytest.raises(ValueError, match=r"hidden_size must be an int >= 1"):
    init(jax.random.key(0), 3, 0)
  with pytest.raises(TypeError, match=r"input_size must be an int >= 1"):
    init(jax.random.key(0), "3", 4)
  with pytest.raises(ValueError, match=r"hidden_size must be an int >= 1"):
    rnn.Recurrent(cell=name, hidden_size=0).init(
      jax.random.key(0), jnp.zeros((2, 3))
    )


@pytest.mark.parametrize("name", ["elman", "lstm", "gru"])
def test_initialisers_take_dtype_names_and_refuse_non_floats(name):
  init = rnn.get_cell(name).init
  params = init(jax.random.key(0), 3, 4, dtype="bf16")
  assert {p.dtype for p in jax.tree.leaves(params)} == {jnp.dtype("bfloat16")}
  params = init(jax.random.key(0), 3, 4, dtype="float32")
  assert {p.dtype for p in jax.tree.leaves(params)} == {jnp.dtype("float32")}
  for bad in ("int32", jnp.int8, "fp33"):
    with pytest.raises(TypeError, match="dtype must be a float dtype"):
      init(jax.random.key(0), 3, 4, dtype=bad)
