"""The DQN loop learns against the target network and refreshes it on time.

Loop-level checks: `dqn.make_loop` runs one iteration per evaluation period
(`eval_every == num_envs`), so the carry before and after every iteration
is visible. On the endless probe (observation `[1]`, reward 1, never
terminal) with a linear Q-network and greedy acting, every stored
transition is the same one, so every sampled batch is too and the loss of
each gradient step has a closed form in the online and target parameters
before it (Mnih et al. 2015; van Hasselt, Guez & Silver 2016):

  td = 1 + gamma * Q_target(o')[a*] - Q(o)[0],   loss = td^2 / 2,

with `a* = argmax Q_target(o')` for DQN and `argmax Q(o')` for double DQN.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from equivlab.rl import dqn

_GAMMA = 0.5
_CONFIG = dqn.DQNConfig(
  env_name="Probe-endless",
  max_steps_in_episode=5,
  num_envs=2,
  total_env_steps=24,
  eval_every=2,  # one iteration per period: the carry after each
  eval_episodes=1,
  hidden_sizes=(),  # Q(o) = o @ kernel + bias, o = [1]
  learning_rate=0.05,
  gamma=_GAMMA,
  loss="l2",
  double_dqn=False,
  buffer_size=8,
  batch_size=2,
  learning_starts=0,
  train_every=2,  # a gradient step every iteration
  target_period=6,  # a refresh every third iteration
  epsilon_start=0.0,
  epsilon_end=0.0,
  epsilon_decay_steps=1,
)
# Online Q = [1, -5]: greedy action 0 throughout (only Q[0] learns). The
# target starts elsewhere, with its own argmax at action 1.
_ONLINE_BIAS = (1.0, -5.0)
_TARGET_BIAS = (3.0, 4.0)


def _q(params) -> np.ndarray:
  """The linear network's action values at the observation `[1]`, `[2]`."""
  layer = params["params"]["Dense_0"]
  return np.asarray(layer["kernel"][0] + layer["bias"])


def _with_bias(params, bias):
  layer = params["params"]["Dense_0"]
  return {
    "params": {
      "Dense_0": {
        "kernel": jnp.zeros_like(layer["kernel"]),
        "bias": jnp.asarray(bias, layer["bias"].dtype),
      }
    }
  }


def _iterations(config: dqn.DQNConfig):
  """Carries before and after each iteration, and each iteration's metrics.

  Returns:
    `(states, metrics)`: `states[i]` is the carry before iteration i
    (`len(states) == I + 1`), `metrics[i]` that iteration's metrics.
  """
  loop = dqn.make_loop(config)
  key = jax.random.key(0)
  state = jax.jit(loop.init)(key)
  state = state._replace(
    params=_with_bias(state.params, _ONLINE_BIAS),
    target_params=_with_bias(state.params, _TARGET_BIAS),
  )
  run = jax.jit(loop.run_periods)
  states, metrics = [state], []
  for index in range(loop.num_periods):
    state, new = run(key, state, jnp.arange(index, index + 1))
    states.append(state)
    metrics.append({k: np.asarray(v).reshape(-1)[0] for k, v in new.items()})
  return states, metrics


def _same(a, b) -> bool:
  return all(
    np.array_equal(x, y)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
  )


@pytest.mark.parametrize("double_dqn", [False, True])
def test_every_step_learns_against_the_target_parameters(double_dqn):
  config = dataclasses.replace(_CONFIG, double_dqn=double_dqn)
  states, metrics = _iterations(config)
  assert all(m["updated"] for m in metrics)
  telling = 0  # steps whose loss against the online parameters differs
  for i, (before, m) in enumerate(zip(states, metrics, strict=False)):
    q, q_target = _q(before.params), _q(before.target_params)
    assert np.argmax(q) == 0, f"iteration {i}: online argmax moved"
    bootstrap = q_target[np.argmax(q)] if double_dqn else q_target.max()
    want = 0.5 * (1.0 + _GAMMA * bootstrap - q[0]) ** 2
    np.testing.assert_allclose(m["loss"], want, rtol=1e-5, err_msg=f"{i}")
    online = q[np.argmax(q)] if double_dqn else q.max()
    telling += abs(0.5 * (1.0 + _GAMMA * online - q[0]) ** 2 - want) > 1e-3
  # Right after a hard refresh the two networks agree; else they differ.
  assert telling >= 8


@pytest.mark.parametrize("target_update", ["hard", "polyak"])
def test_the_target_is_refreshed_exactly_at_the_configured_period(
  target_update,
):
  tau = 1.0 if target_update == "hard" else 0.25
  config = dataclasses.replace(_CONFIG, target_update=target_update, tau=tau)
  states, metrics = _iterations(config)
  refreshed = []
  for i in range(len(metrics)):
    before, after = states[i], states[i + 1]
    assert not _same(after.params, before.params), f"{i}: no learning"
    crossed = (i + 1) * 2 // 6 > i * 2 // 6  # env steps 6, 12, 18, 24
    assert bool(metrics[i]["target_updated"]) == crossed, f"iteration {i}"
    if not crossed:
      assert _same(after.target_params, before.target_params), f"{i}"
      assert not _same(after.target_params, after.params), f"{i}"
      continue
    refreshed.append(i)
    want = jax.tree.map(
      lambda p, t: t + tau * (p - t), after.params, before.target_params
    )
    got = jax.tree.leaves(after.target_params)
    for leaf, expected in zip(got, jax.tree.leaves(want), strict=True):
      np.testing.assert_allclose(leaf, expected, rtol=1e-6, err_msg=f"{i}")
    if target_update == "hard":
      assert _same(after.target_params, after.params), f"{i}"
  assert refreshed == [2, 5, 8, 11]
