"""Tests of equivlab.rl.dqn.driver: chunks, seed groups, checkpoints, resume.

The chunked, checkpointed training is checked bit for bit against
`jax.vmap(dqn.make_train(config))`, and a run 'killed' after a checkpoint
resumes to the same metrics and carry as an uninterrupted one.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from equivlab import training
from equivlab.parallel import threads
from equivlab.rl import dqn
from equivlab.rl.dqn import driver

_TINY = dqn.DQNConfig(
  env_name="ChainMDP",
  env_kwargs=(("num_states", 4),),
  max_steps_in_episode=10,
  num_envs=2,
  total_env_steps=300,
  eval_every=100,
  eval_episodes=2,
  learning_starts=20,
  train_every=2,
  batch_size=8,
  buffer_size=64,
  hidden_sizes=(8,),
  target_period=20,
  epsilon_decay_steps=100,
)


def _spy(monkeypatch, *, kill_after_saves=None):
  """Records the checkpoints saved (periods done); may 'kill' the run."""
  saves = []
  save = driver.save_checkpoint

  def counting_save(path, settings, state, periods, metrics):
    save(path, settings, state, periods, metrics)
    saves.append(periods)
    if len(saves) == kill_after_saves:
      raise KeyboardInterrupt("killed")

  monkeypatch.setattr(driver, "save_checkpoint", counting_save)
  return saves


def _assert_equal(mine, theirs):
  jax.tree.map(np.testing.assert_array_equal, mine, theirs)


def _state_leaves(config, trained):
  axes = jax.tree.leaves(
    dqn.make_loop(config).state_axes, is_leaf=lambda a: a is None
  )
  return axes, jax.tree.leaves(trained["state"])


def test_chunks_are_the_bits_of_make_train(tmp_path):
  """Period by period, with the carry between calls, as one whole scan."""
  trained = driver.train_resumable(_TINY, tmp_path, seeds=[0, 1, 2])
  keys = jnp.stack([jax.random.key(s) for s in (0, 1, 2)])
  whole = jax.jit(jax.vmap(dqn.make_train(_TINY)))(keys)
  flat = driver.flat_metrics(trained["metrics"])
  assert set(flat) == set(whole["metrics"])
  for name, value in whole["metrics"].items():
    np.testing.assert_array_equal(flat[name], value, err_msg=name)
  # Shared counters are one scalar in the chunks, one per seed in `whole`.
  axes, leaves = _state_leaves(_TINY, trained)
  for axis, mine, theirs in zip(
    axes, leaves, jax.tree.leaves(whole["state"]), strict=True
  ):
    np.testing.assert_array_equal(mine, theirs if axis == 0 else theirs[0])


def test_seed_groups_are_the_bits_of_vmap_over_each_group(tmp_path):
  trained = driver.train_resumable(
    _TINY, tmp_path, seeds=[4, 5, 6], groups=2
  )  # groups of 1 and 2 seeds
  assert trained["groups"] == 2 and trained["devices"] == 1
  keys = jnp.stack([jax.random.key(s) for s in (4, 5, 6)])
  train = jax.jit(jax.vmap(dqn.make_train(_TINY)))
  parts = [train(keys[:1]), train(keys[1:])]
  flat = driver.flat_metrics(trained["metrics"])
  for name in flat:
    want = np.concatenate([part["metrics"][name] for part in parts])
    np.testing.assert_array_equal(flat[name], want, err_msg=name)
  axes, leaves = _state_leaves(_TINY, trained)
  states = (parts[0]["state"], parts[1]["state"])
  rows = zip(axes, leaves, *map(jax.tree.leaves, states), strict=True)
  for axis, mine, first, rest in rows:
    want = np.concatenate([first, rest]) if axis == 0 else first[0]
    np.testing.assert_array_equal(mine, want)


def test_default_seed_groups_follow_the_devices(monkeypatch):
  """Sharded over devices that divide the seeds; else one group per core."""
  monkeypatch.setattr(jax, "device_count", lambda: 4)
  _, mesh, groups = driver.seed_placement(range(4))
  assert mesh is not None and groups == [slice(0, 4)]
  monkeypatch.setattr(jax, "device_count", lambda: 1)
  monkeypatch.setattr(threads.os, "cpu_count", lambda: 2)
  _, mesh, groups = driver.seed_placement(range(4))
  assert mesh is None and groups == [slice(0, 2), slice(2, 4)]
  _, mesh, groups = driver.seed_placement(range(4), 1)
  assert mesh is None and groups == [slice(0, 4)]


def test_a_killed_run_in_groups_resumes_to_the_same_carry(
  tmp_path, monkeypatch
):
  run = dict(seeds=[0, 1], groups=2, checkpoint_every_steps=100)
  _spy(monkeypatch, kill_after_saves=1)
  with pytest.raises(KeyboardInterrupt):
    driver.train_resumable(_TINY, tmp_path / "killed", **run)
  saves = _spy(monkeypatch)
  resumed = driver.train_resumable(_TINY, tmp_path / "killed", **run)
  assert saves == [2, 3] and resumed["resumed_at"] == 1
  fresh = driver.train_resumable(_TINY, tmp_path / "fresh", **run)
  jax.tree.map(
    np.testing.assert_array_equal, resumed["metrics"], fresh["metrics"]
  )
  jax.tree.map(np.testing.assert_array_equal, resumed["state"], fresh["state"])
  # The grouping may change between runs: the checkpoint is resumed, and a
  # finished run is not trained again.
  saves = _spy(monkeypatch)
  again = driver.train_resumable(
    _TINY, tmp_path / "fresh", **(run | {"groups": 1})
  )
  assert saves == [] and again["resumed_at"] == 3
  np.testing.assert_array_equal(
    again["metrics"]["eval_return"], fresh["metrics"]["eval_return"]
  )


def test_checkpoints_by_steps_by_time_and_at_the_end(tmp_path, monkeypatch):
  config = dataclasses.replace(_TINY, total_env_steps=200)
  saves = _spy(monkeypatch)
  driver.train_resumable(
    config, tmp_path / "a", seeds=[0], checkpoint_every_secs=None
  )
  assert saves == [2]  # The end only.
  saves = _spy(monkeypatch)
  driver.train_resumable(
    _TINY,
    tmp_path / "b",
    seeds=[0],
    checkpoint_every_secs=None,
    checkpoint_every_steps=150,
  )
  assert saves == [2, 3]  # 150 is crossed in period 2 (env steps 101-200).
  saves = _spy(monkeypatch)
  driver.train_resumable(
    config, tmp_path / "c", seeds=[0], checkpoint_every_secs=1e-9
  )
  assert saves == [1, 2]


def test_a_damaged_checkpoint_starts_over(tmp_path):
  config = dataclasses.replace(_TINY, total_env_steps=100)
  first = driver.train_resumable(config, tmp_path, seeds=[0])
  (tmp_path / driver.CHECKPOINT).write_bytes(b"PK\x03\x04 not a zip")
  again = driver.train_resumable(config, tmp_path, seeds=[0])
  assert again["resumed_at"] == 0
  jax.tree.map(
    np.testing.assert_array_equal, again["metrics"], first["metrics"]
  )


def test_a_checkpoint_of_other_settings_is_refused(tmp_path):
  config = dataclasses.replace(_TINY, total_env_steps=100)
  driver.train_resumable(config, tmp_path, seeds=[0])
  other = dataclasses.replace(config, learning_rate=1e-3)
  with pytest.raises(ValueError, match="learning_rate: saved 0.00025 vs now"):
    driver.train_resumable(other, tmp_path, seeds=[0])
  with pytest.raises(ValueError, match=r"seeds: saved \[0\] vs now \[1\]"):
    driver.train_resumable(config, tmp_path, seeds=[1])


def test_settings_hold_the_resolved_schedule():
  settings = driver.settings_of(dqn.DQNConfig(), [0, 1])
  assert settings["learning_starts"] == 10_000
  assert settings["epsilon_decay_steps"] == 100_000
  assert settings["seeds"] == [0, 1]
  assert settings["env_kwargs"] == []


def test_a_workdir_in_use_is_refused(tmp_path):
  with training.WorkdirLock(tmp_path):
    with pytest.raises(training.WorkdirInUseError, match="in use by"):
      driver.train_resumable(_TINY, tmp_path, seeds=[0])
  assert not (tmp_path / driver.CHECKPOINT).exists()


def test_a_diverging_run_stops_in_one_line(tmp_path):
  config = dataclasses.replace(_TINY, learning_rate=1e38)
  with pytest.raises(FloatingPointError, match="seed index 0 at iteration"):
    driver.train_resumable(config, tmp_path, seeds=[0])


@pytest.mark.parametrize(
  ("changes", "error", "message"),
  [
    ({"seeds": []}, ValueError, "seeds must hold at least one int"),
    ({"seeds": [0, -1]}, ValueError, r"seeds\[1\] must be an int >= 0"),
    ({"seeds": [0, 0]}, ValueError, "seeds must be distinct"),
    ({"seeds": "01"}, TypeError, "seeds must be a sequence of ints"),
    ({"groups": 0}, ValueError, "groups must be an int in"),
    ({"groups": 3}, ValueError, "groups must be an int in"),
    ({"checkpoint_every_steps": 0}, ValueError, "checkpoint_every_steps"),
    ({"checkpoint_every_secs": -1.0}, ValueError, "checkpoint_every_secs"),
  ],
)
def test_bad_arguments_are_refused(tmp_path, changes, error, message):
  arguments = {"seeds": [0, 1]} | changes
  with pytest.raises(error, match=message):
    driver.train_resumable(_TINY, tmp_path, **arguments)
  assert not (tmp_path / driver.CHECKPOINT).exists()
