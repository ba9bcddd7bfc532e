"""Tests for equivlab.rl.replay: the pure uniform replay buffer."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from equivlab.rl import replay

_EXAMPLE = {"obs": jnp.zeros((2,)), "action": jnp.zeros((), jnp.int32)}


def _items(start, count):
  values = start + jnp.arange(count)
  return {
    "obs": jnp.stack([values, -values], axis=1).astype(jnp.float32),
    "action": values.astype(jnp.int32),
  }


class ReplayTest(chex.TestCase):
  def test_add_and_wrap_around(self):
    state = replay.init(5, _EXAMPLE)
    self.assertEqual(int(state.size), 0)
    state = replay.add(state, _items(0, 3))
    self.assertEqual((int(state.size), int(state.position)), (3, 3))
    state = replay.add(state, _items(3, 3))
    self.assertEqual((int(state.size), int(state.position)), (5, 1))
    # Item 5 overwrote item 0, the oldest.
    np.testing.assert_array_equal(state.storage["action"], [5, 1, 2, 3, 4])
    np.testing.assert_array_equal(state.storage["obs"][0], [5.0, -5.0])

  def test_can_sample(self):
    state = replay.add(replay.init(8, _EXAMPLE), _items(0, 3))
    self.assertTrue(bool(replay.can_sample(state, 3)))
    self.assertFalse(bool(replay.can_sample(state, 4)))

  @chex.variants(with_jit=True, without_jit=True)
  def test_samples_only_written_items(self):
    # 70 of 100 rows written: rows 70..99 (zeros) must never come back.
    state = replay.add(replay.init(100, _EXAMPLE), _items(10, 70))
    batch = self.variant(lambda k, s: replay.sample(k, s, 64))(
      jax.random.key(0), state
    )
    actions = np.asarray(batch["action"])
    self.assertTrue(np.all((actions >= 10) & (actions < 80)))
    # Leaves of one item stay together.
    np.testing.assert_array_equal(batch["obs"][:, 0], batch["action"])

  def test_uniform(self):
    state = replay.add(replay.init(4, _EXAMPLE), _items(0, 4))
    batch = replay.sample(jax.random.key(1), state, 4)
    self.assertEqual(batch["action"].shape, (4,))
    many = jax.vmap(lambda k: replay.sample(k, state, 4)["action"])(
      jax.random.split(jax.random.key(2), 2000)
    )
    freq = np.bincount(np.asarray(many).ravel(), minlength=4) / many.size
    np.testing.assert_allclose(freq, np.full(4, 0.25), atol=0.02)

  def test_vmap_over_buffers_in_scan(self):
    def fill(key):
      state = replay.init(6, _EXAMPLE)

      def body(state, i):
        return replay.add(state, _items(i * 2, 2)), None

      state, _ = jax.lax.scan(body, state, jnp.arange(4))
      return replay.sample(key, state, 3)["action"]

    out = jax.jit(jax.vmap(fill))(jax.random.split(jax.random.key(3), 5))
    self.assertEqual(out.shape, (5, 3))
    # After 8 items in a ring of 6, items 2..7 remain.
    self.assertTrue(np.all((np.asarray(out) >= 2) & (np.asarray(out) <= 7)))

  def test_sample_before_a_batch_raises_eagerly(self):
    state = replay.add(replay.init(8, _EXAMPLE), _items(0, 2))
    with pytest.raises(ValueError, match="holds 2 items"):
      replay.sample(jax.random.key(0), state, 4)
    with pytest.raises(ValueError, match="holds 0 items"):
      replay.sample(jax.random.key(0), replay.init(8, _EXAMPLE), 1)

  def test_sample_before_a_batch_raises_under_jit(self):
    state = replay.add(replay.init(8, _EXAMPLE), _items(0, 2))
    sample = jax.jit(lambda k, s: replay.sample(k, s, 4))
    with pytest.raises(Exception, match="holds 2 items"):
      jax.block_until_ready(sample(jax.random.key(0), state))
    full = replay.add(state, _items(2, 2))
    self.assertEqual(sample(jax.random.key(0), full)["action"].shape, (4,))

  def test_buffer_smaller_than_batch(self):
    state = replay.add(replay.init(3, _EXAMPLE), _items(0, 3))
    with pytest.raises(ValueError, match="capacity 3"):
      replay.sample(jax.random.key(0), state, 4)

  def test_bad_capacity(self):
    with pytest.raises(ValueError, match="positive integer"):
      replay.init(0, _EXAMPLE)

  def test_bad_items(self):
    state = replay.init(4, _EXAMPLE)
    with pytest.raises(ValueError, match="structure"):
      replay.add(state, {"obs": jnp.zeros((1, 2))})
    with pytest.raises(ValueError, match=r"\[B, \*item_shape\]"):
      replay.add(
        state, {"obs": jnp.zeros((1, 3)), "action": jnp.zeros((1,), jnp.int32)}
      )
    with pytest.raises(ValueError, match="capacity 4"):
      replay.add(state, _items(0, 5))
