"""Tests of equivlab.parallel.threads: thread_map, group_bounds, map_groups."""

import threading

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from equivlab import parallel


def test_group_bounds_cover_the_axis_in_near_equal_groups():
  assert parallel.group_bounds(5, 2) == [slice(0, 2), slice(2, 5)]
  assert parallel.group_bounds(4, 4) == [slice(i, i + 1) for i in range(4)]
  for n in range(1, 9):
    for g in range(1, n + 1):
      sizes = [s.stop - s.start for s in parallel.group_bounds(n, g)]
      assert sum(sizes) == n and max(sizes) - min(sizes) <= 1


@pytest.mark.parametrize(
  ("num", "groups", "match"),
  [
    (0, None, "at least one"),
    (3, 0, "groups"),
    (3, 4, "exceed"),
    (3, 1.5, "int"),
  ],
)
def test_group_bounds_rejects_bad_input(num, groups, match):
  with pytest.raises(ValueError, match=match):
    parallel.group_bounds(num, groups)


def test_default_groups_is_one_per_cpu_and_at_most_one_per_item(monkeypatch):
  monkeypatch.setattr(parallel.threads.os, "cpu_count", lambda: 2)
  assert [parallel.default_groups(n) for n in (1, 2, 5)] == [1, 2, 2]


def test_thread_map_keeps_order_uses_threads_and_raises_the_first_error():
  names = set()

  def work(x):
    names.add(threading.current_thread().name)
    return x * x

  assert parallel.thread_map(work, list(range(6)), 3) == [0, 1, 4, 9, 16, 25]
  assert any(name != threading.current_thread().name for name in names)
  assert parallel.thread_map(work, [3], 1) == [9]

  def fail(x):
    raise RuntimeError(f"item {x}")

  with pytest.raises(RuntimeError, match="item"):
    parallel.thread_map(fail, [1, 2], 2)
  with pytest.raises(ValueError, match="workers"):
    parallel.thread_map(work, [1], 0)


def test_map_groups_equals_the_function_on_the_whole_axis():
  fn = jax.jit(jax.vmap(lambda k: jax.random.normal(k, (3,))))
  keys = jax.random.split(jax.random.key(0), 5)
  whole = fn(keys)
  for groups in (1, 2, 5):
    np.testing.assert_array_equal(parallel.map_groups(fn, keys, groups), whole)
  tree = {"a": np.arange(4.0), "b": jnp.ones((4, 2))}
  out = parallel.map_groups(lambda t: t, tree, 2)
  assert isinstance(out["a"], np.ndarray)
  np.testing.assert_array_equal(out["b"], tree["b"])


def test_map_groups_rejects_leaves_without_a_common_leading_axis():
  with pytest.raises(ValueError, match="leading axis"):
    parallel.map_groups(lambda t: t, {"a": np.ones(3), "b": np.ones(4)})
  with pytest.raises(ValueError, match="leading axis"):
    parallel.map_groups(lambda t: t, np.float32(1.0))
