"""Tests of the optimiser identities (Adam, AdaGrad, RMSProp, Robbins-Monro)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from equivlab.fundamentals import optimizer_theory


def _quadratic_grad(w):
  # The gradient of a fixed ill-conditioned quadratic with a sine ripple.
  scales = jnp.array([1.0, 10.0, 0.1])
  return scales * (w - 1.0) + jnp.sin(3.0 * w)


def test_adam_moments_closed_form_match_optax_state_over_50_steps():
  with jax.enable_x64(True):
    b1, b2 = 0.8, 0.95
    opt = optax.adam(0.05, b1=b1, b2=b2)
    w = jnp.array([0.3, -1.0, 2.0])
    state = opt.init(w)
    grads, mus, nus = [], [], []
    for _ in range(50):
      g = _quadratic_grad(w)
      updates, state = opt.update(g, state, w)
      w = optax.apply_updates(w, updates)
      grads.append(g)
      mus.append(state[0].mu)
      nus.append(state[0].nu)
    m, v = optimizer_theory.adam_moments_closed_form(jnp.stack(grads), b1, b2)
    np.testing.assert_allclose(m, jnp.stack(mus), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(v, jnp.stack(nus), rtol=1e-12, atol=1e-14)


def test_adam_moments_closed_form_coefficients():
  # A = 1 - b1, B_i = b1^(t-i): a unit impulse at step 1 decays as b1^(t-1).
  g = jnp.zeros((6, 1)).at[0, 0].set(1.0)
  m, v = optimizer_theory.adam_moments_closed_form(g, 0.5, 0.9)
  np.testing.assert_allclose(m[:, 0], 0.5 * 0.5 ** np.arange(6), rtol=1e-6)
  np.testing.assert_allclose(v[:, 0], 0.1 * 0.9 ** np.arange(6), rtol=1e-5)
  # b1 = 0: m_t = g_t, the step of the Adam-to-AdaGrad limit.
  g = jnp.arange(1.0, 5.0)[:, None]
  np.testing.assert_allclose(
    optimizer_theory.adam_moments_closed_form(g, 0.0, 0.5)[0], g
  )


def test_bias_corrected_v_tends_to_the_mean_square_as_b2_to_1():
  with jax.enable_x64(True):
    g = jax.random.normal(jax.random.key(0), (20, 2), jnp.float64)
    b2 = 1.0 - 1e-9
    _, v = optimizer_theory.adam_moments_closed_form(g, 0.0, b2)
    t = jnp.arange(1, 21, dtype=jnp.float64)[:, None]
    v_hat = v / (1.0 - b2**t)
    mean_sq = jnp.cumsum(g**2, axis=0) / t
    np.testing.assert_allclose(v_hat, mean_sq, rtol=1e-6)


def test_adam_approaches_adagrad_as_b2_to_1():
  with jax.enable_x64(True):
    rows = optimizer_theory.adam_adagrad_gap(
      (0.9, 0.99, 0.999, 0.9999), num_steps=200, dim=4
    )
  gaps = [r.relative_gap for r in rows]
  assert all(a > 3.0 * b for a, b in zip(gaps, gaps[1:], strict=False))
  assert gaps[-1] < 1e-3
  assert gaps[0] > 1e-2


def test_adam_as_adagrad_first_step_is_eta0_times_sign():
  # t = 1, b1 = 0: v_hat = g^2, so the step is -eta0 * sign(g) for any b2.
  opt = optimizer_theory.adam_as_adagrad(0.3, 0.99)
  g = jnp.array([2.0, -0.01])
  updates, _ = opt.update(g, opt.init(g), g)
  np.testing.assert_allclose(updates, [-0.3, 0.3], rtol=1e-6)


def test_rmsprop_matches_its_equations_and_optax():
  with jax.enable_x64(True):
    ours = optimizer_theory.rmsprop(0.01, decay=0.9, eps=1e-8)
    ref = optax.rmsprop(0.01, decay=0.9, eps=1e-8)
    w_ours = w_ref = jnp.array([0.3, -1.0, 2.0])
    s_ours, s_ref = ours.init(w_ours), ref.init(w_ref)
    r = jnp.zeros(3)
    w_hand = w_ours
    for _ in range(30):
      g = _quadratic_grad(w_hand)
      # RMSProp's two update equations, line by line.
      r = 0.9 * r + 0.1 * g**2
      w_hand = w_hand - 0.01 / jnp.sqrt(r + 1e-8) * g
      u, s_ours = ours.update(_quadratic_grad(w_ours), s_ours)
      w_ours = optax.apply_updates(w_ours, u)
      u, s_ref = ref.update(_quadratic_grad(w_ref), s_ref)
      w_ref = optax.apply_updates(w_ref, u)
    np.testing.assert_allclose(w_ours, w_hand, rtol=1e-12)
    np.testing.assert_allclose(w_ours, w_ref, rtol=1e-12)


def test_rmsprop_steps_ignore_the_gradient_scale_unlike_sgd():
  # RMSProp adapts the step to the gradient's size.
  def run(opt, scale):
    w = jnp.array([3.0, -2.0])
    state = opt.init(w)
    for _ in range(20):
      u, state = opt.update(scale * _quadratic_grad3(w), state)
      w = optax.apply_updates(w, u)
    return w

  ours = optimizer_theory.rmsprop(0.05, eps=1e-12)
  np.testing.assert_allclose(run(ours, 1.0), run(ours, 1000.0), rtol=1e-4)
  sgd = optax.sgd(1e-3)
  assert np.max(np.abs(run(sgd, 1.0) - run(sgd, 1000.0))) > 0.5


def _quadratic_grad3(w):
  return jnp.array([1.0, 4.0]) * w


def test_rmsprop_bad_input():
  with pytest.raises(ValueError, match="learning_rate must be a finite nu"):
    optimizer_theory.rmsprop(0.0)
  with pytest.raises(ValueError, match="decay must be a finite number >= 0"):
    optimizer_theory.rmsprop(0.1, decay=1.0)
  with pytest.raises(ValueError, match="eps must be a finite number > 0"):
    optimizer_theory.rmsprop(0.1, eps=0.0)


def test_robbins_monro_schedule_values_and_conditions():
  schedule = optimizer_theory.robbins_monro_schedule(2.0, 4.0)
  np.testing.assert_allclose(
    [schedule(k) for k in range(3)], [0.5, 0.4, 2.0 / 6.0], rtol=1e-6
  )
  alphas = np.asarray(jax.vmap(schedule)(jnp.arange(100_000)), np.float64)
  partial = np.cumsum(alphas)
  # sum alpha_k grows like C0 log k (diverges) ...
  assert partial[-1] - partial[9_999] > 2.0 * np.log(10.0) * 0.99
  # ... while sum alpha_k^2 converges (bounded by C0^2 / (C1 - 1) + a_0^2).
  squares = np.cumsum(alphas**2)
  assert squares[-1] - squares[9_999] < 1e-3
  assert squares[-1] < 4.0 / 3.0 + 0.25


def _sgd_iterates(opt, w0, xs):
  # SGD on 1/2 (w - x_k)^2, one sample per step.
  def step(carry, x):
    w, state = carry
    u, state = opt.update(w - x, state)
    w = optax.apply_updates(w, u)
    return (w, state), w

  _, ws = jax.lax.scan(step, (w0, opt.init(w0)), xs)
  return ws


def test_robbins_monro_sgd_computes_the_running_mean():
  # With alpha_k = 1 / (1 + k) the iterate is exactly the sample mean.
  with jax.enable_x64(True):
    xs = 5.0 + jax.random.normal(jax.random.key(1), (500,), jnp.float64)
    schedule = optimizer_theory.robbins_monro_schedule(1.0, 1.0)
    ws = _sgd_iterates(optax.sgd(schedule), jnp.array(-40.0), xs)
    running_mean = np.cumsum(xs) / np.arange(1, 501)
    np.testing.assert_allclose(ws, running_mean, rtol=1e-10)
    # A constant step keeps wandering at the noise level instead.
    ws_const = _sgd_iterates(optax.sgd(0.1), jnp.array(-40.0), xs)
    assert np.std(ws_const[-200:]) > 5.0 * np.std(ws[-200:])


def test_schedules_bad_input():
  with pytest.raises(ValueError, match="c0 must be a finite number > 0"):
    optimizer_theory.robbins_monro_schedule(0.0, 1.0)
  with pytest.raises(ValueError, match="c1 must be a finite number > 0"):
    optimizer_theory.robbins_monro_schedule(1.0, 0.0)
  with pytest.raises(ValueError, match="eta0 must be a finite number > 0"):
    optimizer_theory.inverse_sqrt_schedule(-1.0)
  with pytest.raises(ValueError, match=r"b2 must be in \[0, 1\)"):
    optimizer_theory.adam_moments_closed_form(jnp.ones((3, 1)), 0.9, 1.0)
  with pytest.raises(ValueError, match="grads must be stacked"):
    optimizer_theory.adam_moments_closed_form(jnp.ones(()), 0.9, 0.9)
  with pytest.raises(ValueError, match=r"every b2 must be in \(0, 1\)"):
    optimizer_theory.adam_adagrad_gap((0.9, 1.0))
  with pytest.raises(ValueError, match="num_steps must be >= 1"):
    optimizer_theory.adam_adagrad_gap(num_steps=0)


def test_adam_adagrad_benchmark_prints_and_writes_the_table(tmp_path, capsys):
  from benchmarks import adam_adagrad  # noqa: PLC0415

  results = adam_adagrad.run(tmp_path, num_steps=200, b2s=(0.9, 0.9999))
  assert "| 0.9999 |" in capsys.readouterr().out
  assert "| 0.9999 |" in (tmp_path / "adam_adagrad.md").read_text()
  assert (tmp_path / "adam_adagrad.json").stat().st_size > 0
  exact = results["exact (eps = 0, accumulator = 0)"]
  defaults = results["optax defaults"]
  assert exact[1]["relative_gap"] < 1e-3
  # optax.adagrad starts its accumulator at 0.1: Adam never gets there.
  assert defaults[1]["relative_gap"] > 30.0 * exact[1]["relative_gap"]
  assert defaults[1]["relative_gap"] > 0.5 * defaults[0]["relative_gap"]


_INF, _NAN = float("inf"), float("nan")


def _quadratic_grad2(w, t):
  del t
  return 2.0 * w


@pytest.mark.parametrize(
  ("call", "error", "match"),
  [
    # Step sizes outside (0, inf).
    (lambda: optimizer_theory.rmsprop(_INF), ValueError, "learning_rate"),
    (lambda: optimizer_theory.rmsprop(_NAN), ValueError, "learning_rate"),
    (lambda: optimizer_theory.rmsprop(-0.1), ValueError, "learning_rate"),
    (lambda: optimizer_theory.rmsprop("0.1"), TypeError, "learning_rate"),
    (lambda: optimizer_theory.rmsprop(0.1, decay=-0.5), ValueError, "decay"),
    (lambda: optimizer_theory.rmsprop(0.1, eps=_INF), ValueError, "eps"),
    (lambda: optimizer_theory.inverse_sqrt_schedule(_INF), ValueError, "eta0"),
    (lambda: optimizer_theory.inverse_sqrt_schedule(None), TypeError, "eta0"),
    (
      lambda: optimizer_theory.robbins_monro_schedule(_INF, 1.0),
      ValueError,
      "c0",
    ),
    (lambda: optimizer_theory.robbins_monro_schedule(1, "1"), TypeError, "c1"),
    (lambda: optimizer_theory.adam_as_adagrad(0.0, 0.9), ValueError, "eta0"),
    (lambda: optimizer_theory.adam_as_adagrad(0.1, 1.0), ValueError, "b2"),
    (lambda: optimizer_theory.adam_as_adagrad(0.1, 0.0), ValueError, "b2"),
    (
      lambda: optimizer_theory.adam_as_adagrad(0.1, 0.9, eps=-1e-8),
      ValueError,
      "eps",
    ),
    # Step counts and the wrong kinds.
    (
      lambda: optimizer_theory.optimizer_trajectory(
        optax.sgd(0.1), _quadratic_grad2, jnp.zeros(2), -1
      ),
      ValueError,
      "num_steps",
    ),
    (
      lambda: optimizer_theory.optimizer_trajectory(
        optax.sgd(0.1), _quadratic_grad2, jnp.zeros(2), 2.0
      ),
      TypeError,
      "num_steps",
    ),
    (
      lambda: optimizer_theory.optimizer_trajectory(
        "sgd", _quadratic_grad2, jnp.zeros(2), 2
      ),
      TypeError,
      "optimizer must be an optax",
    ),
    (
      lambda: optimizer_theory.optimizer_trajectory(
        optax.sgd(0.1), None, jnp.zeros(2), 2
      ),
      TypeError,
      "grad_fn must be callable",
    ),
  ],
)
def test_step_sizes_outside_their_domain_are_clear_errors(call, error, match):
  with pytest.raises(error, match=match):
    call()


def test_traced_decays_are_not_checked_under_vmap():
  # adam_adagrad_gap vmaps b2: the check must let tracers through.
  def last(b2):
    adam = optimizer_theory.adam_as_adagrad(0.1, b2)
    return optimizer_theory.optimizer_trajectory(
      adam, _quadratic_grad2, jnp.ones(2), 3
    )[-1]

  out = jax.vmap(last)(jnp.array([0.9, 0.99]))
  assert out.shape == (2, 2) and bool(jnp.all(jnp.isfinite(out)))
