"""Tests of experiments/dqn.py on tiny settings: files, flags, resume, lock.

A run 'killed' after a checkpoint resumes to the same results.json as an
uninterrupted one. The driver underneath (chunks, seed groups, checkpoint
cadence, refusals) is tested in dqn_driver_test.py.
"""

import json

import jax
import numpy as np
import pytest
from absl import flags

from equivlab import training
from equivlab.rl.dqn import driver
from experiments import dqn as dqn_experiment

_TINY = dict(
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
  num_seeds=2,
)


def _config(**changes) -> dqn_experiment.Config:
  return dqn_experiment.Config(**(_TINY | changes))


def _flag_values(*argv):
  flag_values = flags.FlagValues()
  holders = dqn_experiment.define_flags(flag_values)
  flag_values(["dqn", *argv])
  return holders


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


def _resumed_at(workdir) -> int:
  timings = json.loads((workdir / "timings.json").read_text())
  return timings["resumed_at_env_steps"]


def test_run_writes_results_table_figure_and_checkpoint(tmp_path, capsys):
  # 8 seeds over the 8 simulated test devices: the sharded path.
  config = _config(num_seeds=8, seed=3, target_return=-3.0)
  results = dqn_experiment.run(config, tmp_path)
  saved = json.loads((tmp_path / "results.json").read_text())
  assert saved == results
  assert saved["seeds"] == list(range(3, 11))
  assert saved["devices"] == min(8, jax.device_count())
  assert saved["eval_env_steps"] == [100, 200, 300]
  assert np.asarray(saved["eval_returns"]).shape == (8, 3)
  assert len(saved["final_greedy_returns"]) == 8
  assert len(saved["steps_to_target"]) == 8
  for steps, curve in zip(
    saved["steps_to_target"], saved["eval_returns"], strict=True
  ):
    assert steps == dqn_experiment.steps_to_reach([100, 200, 300], curve, -3)
  assert "env steps to reach -3" in capsys.readouterr().out
  assert (tmp_path / "results.md").read_text().startswith("| seed |")
  timings = json.loads((tmp_path / "timings.json").read_text())
  assert timings["env_steps_per_second"] > 0
  png = (tmp_path / "learning_curve.png").read_bytes()
  assert png[:8] == b"\x89PNG\r\n\x1a\n"
  with np.load(tmp_path / dqn_experiment.CHECKPOINT) as checkpoint:
    assert json.loads(str(checkpoint["meta"]))["periods"] == 3
    assert checkpoint["metric/eval_return"].shape == (8, 3)


def test_a_killed_run_resumes_to_the_same_results(tmp_path, monkeypatch):
  config = _config(checkpoint_every_steps=100)
  saves = _spy(monkeypatch, kill_after_saves=2)
  with pytest.raises(KeyboardInterrupt):
    dqn_experiment.run(config, tmp_path / "killed")
  assert saves == [1, 2]

  saves = _spy(monkeypatch)
  dqn_experiment.run(config, tmp_path / "killed")
  assert saves == [3] and _resumed_at(tmp_path / "killed") == 200

  dqn_experiment.run(config, tmp_path / "fresh")
  first, second = (
    (tmp_path / n / "results.json").read_bytes() for n in ("killed", "fresh")
  )
  assert first == second

  # A finished run is not trained again; a new target is reported anew.
  saves = _spy(monkeypatch)
  again = dqn_experiment.run(
    _config(checkpoint_every_steps=100, target_return=-2.5),
    tmp_path / "fresh",
  )
  assert saves == [] and _resumed_at(tmp_path / "fresh") == 300
  assert again["eval_returns"] == json.loads(second)["eval_returns"]
  assert again["config"]["target_return"] == -2.5


def test_a_workdir_in_use_is_refused(tmp_path):
  with training.WorkdirLock(tmp_path):
    with pytest.raises(training.WorkdirInUseError, match="in use by"):
      dqn_experiment.run(_config(), tmp_path)
  assert not (tmp_path / "results.json").exists()


def test_steps_to_reach():
  steps = np.array([10, 20, 30])
  assert dqn_experiment.steps_to_reach(steps, [1.0, 5.0, 9.0], 5.0) == 20
  assert dqn_experiment.steps_to_reach(steps, [1.0, 2.0, 3.0], 5) is None


def test_main_with_flags(tmp_path):
  holders = _flag_values(
    f"--workdir={tmp_path}",
    "--env_name=Probe-constant",
    "--num_seeds=1",
    "--total_env_steps=64",
    "--num_envs=2",
    "--eval_every=32",
    "--eval_episodes=1",
    "--learning_starts=16",
    "--train_every=2",
    "--batch_size=8",
    "--buffer_size=32",
    "--target_period=8",
    "--epsilon_decay_steps=32",
    "--hidden_sizes=4",
  )
  dqn_experiment.main(["dqn"], holders)
  saved = json.loads((tmp_path / "results.json").read_text())
  assert saved["config"]["env_name"] == "Probe-constant"
  assert saved["config"]["hidden_sizes"] == [4]
  assert saved["final_greedy_returns"] == [1.0]


def test_default_flags_are_the_default_config():
  holders = _flag_values()
  assert holders.config() == dqn_experiment.Config()
  assert holders.workdir == "runs/dqn"
  config = _flag_values('--env_kwargs={"num_states": 5}').config()
  assert config.env_kwargs == (("num_states", 5),)


@pytest.mark.parametrize(
  ("argv", "message"),
  [
    (["--learning_rate=nan"], "learning_rate must be a finite number > 0"),
    (["--num_seeds=0"], "num_seeds must be an int >= 1, got 0"),
    (["--seed=-1"], "seed must be an int >= 0, got -1"),
    (["--seed_groups=0"], "seed_groups must be an int >= 1"),
    (["--seed_groups=5"], r"seed_groups \(5\) must not exceed num_seeds \(4\)"),
    (["--gamma=1.5"], r"gamma must lie in \[0, 1\], got 1.5"),
    (["--max_grad_norm=0"], "max_grad_norm must be a finite number > 0"),
    (["--hidden_sizes=64,x"], "--hidden_sizes must be a comma-separated list"),
    (["--hidden_sizes=0"], r"hidden_sizes\[0\] must be an int >= 1"),
    (["--loss=l1"], "loss must be one of"),
    (["--target_update=soft"], "target_update must be 'hard' or 'polyak'"),
    (["--train_every=4"], "train_every must be >= num_envs"),
    (["--eval_every=1001"], "eval_every must be a multiple of num_envs"),
    (["--env_kwargs={a}"], "--env_kwargs must be JSON"),
    (["--target_return=inf"], "target_return must be a finite number"),
    (["--checkpoint_every_steps=0"], "checkpoint_every_steps must be an int"),
    (["--checkpoint_every_secs=-1"], "checkpoint_every_secs must be a finite"),
  ],
)
def test_bad_flags_are_flag_errors(argv, message):
  with pytest.raises(flags.IllegalFlagValueError, match=message):
    _flag_values(*argv)
