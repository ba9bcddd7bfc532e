"""Smoke test of experiments/dqn.py on tiny settings: the files it writes."""

import json
import os
import tempfile

import chex
import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import flags

from equivlab.rl import dqn
from experiments import dqn as dqn_experiment

_TINY = dqn.DQNConfig(
  env_name="ChainMDP",
  env_kwargs=(("num_states", 4),),
  max_steps_in_episode=10,
  num_envs=2,
  total_env_steps=200,
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


class DQNExperimentTest(chex.TestCase):
  def _workdir(self):
    tmp = tempfile.TemporaryDirectory()
    self.addCleanup(tmp.cleanup)
    return tmp.name

  def test_run_writes_results_plot_and_checkpoint(self):
    workdir = self._workdir()
    # 8 seeds over the 8 simulated test devices: the sharded path.
    results = dqn_experiment.run(
      _TINY, workdir, num_seeds=8, seed=3, target_return=-3.0
    )
    with open(os.path.join(workdir, "results.json")) as f:
      saved = json.load(f)
    self.assertEqual(saved["num_seeds"], 8)
    self.assertEqual(saved["devices"], min(8, jax.device_count()))
    self.assertEqual(saved["eval_env_steps"], [100, 200])
    self.assertEqual(np.asarray(saved["eval_returns"]).shape, (8, 2))
    self.assertLen(saved["final_greedy_returns"], 8)
    self.assertLen(saved["steps_to_target"], 8)
    self.assertGreater(saved["env_steps_per_second"], 0.0)
    self.assertEqual(
      saved["final_greedy_returns"], results["final_greedy_returns"]
    )
    png = os.path.join(workdir, "learning_curve.png")
    with open(png, "rb") as f:
      self.assertEqual(f.read(8), b"\x89PNG\r\n\x1a\n")
    restored = ocp.StandardCheckpointer().restore(
      os.path.join(workdir, "checkpoint")
    )
    self.assertEqual(restored["env_steps"].tolist(), [200] * 8)

  def test_steps_to_reach(self):
    steps = np.array([10, 20, 30])
    self.assertEqual(
      dqn_experiment.steps_to_reach(steps, [1.0, 5.0, 9.0], 5.0), 20
    )
    self.assertIsNone(dqn_experiment.steps_to_reach(steps, [1.0, 2.0, 3.0], 5))

  def test_main_with_flags(self):
    workdir = self._workdir()
    flag_values = flags.FlagValues()
    holders = dqn_experiment.define_flags(flag_values)
    flag_values(
      [
        "dqn",
        f"--workdir={workdir}",
        "--env=Probe-constant",
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
      ]
    )
    dqn_experiment.main(["dqn"], holders)
    with open(os.path.join(workdir, "results.json")) as f:
      saved = json.load(f)
    self.assertEqual(saved["config"]["env_name"], "Probe-constant")
    self.assertEqual(saved["final_greedy_returns"], [1.0])
