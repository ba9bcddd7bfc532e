"""Resuming after SIGKILL ends bitwise where an uninterrupted run ends.

A real subprocess trains, stalls on its 11th step (two steps after the
mid-epoch checkpoint at step 8), is killed there with SIGKILL, and the run
is started again in the same workdir. Its parameters, batch statistics,
returned metrics and per-step records must equal those of a run never
interrupted. The model has batch norm and dropout and the data are
augmented, so every kind of state and randomness is covered. A second test
kills the default command of `experiments.train` after its first epoch and
checks that the restart resumes from the end of that epoch.
"""

import json
import os
import pathlib
import signal
import subprocess
import sys
import textwrap
import time

import jax
import numpy as np

from equivlab import train

# 192 examples / 32 = 6 steps per epoch, 3 epochs = 18 steps; checkpoints
# every 4 steps and at every epoch end: 4, 6, 8, 12, 16, 18.
CONFIG = train.TrainConfig(
  model="cnn",
  model_kwargs=(
    ("features", (4,)),
    ("dense_features", 16),
    ("norm", "batch"),
    ("dropout_rate", 0.2),
  ),
  train_limit=192,
  test_limit=64,
  num_epochs=3,
  batch_size=32,
  eval_batch_size=64,
  augment="shift",
  max_shift=2,
  schedule="cosine",
  learning_rate=3e-3,
  checkpoint_every_steps=4,
  max_checkpoints=10,
  log_every_steps=1,
  num_devices=2,
  progress=False,
)
TOTAL_STEPS = 18

_CHILD = """
import json, pathlib, sys, time
from equivlab import train
from equivlab.training import steps as steps_lib

config = train.TrainConfig.from_json(json.loads(sys.argv[2]))
make_steps = steps_lib.make_steps
calls = []

def stalling_steps(*args):
  steps = make_steps(*args)

  def step_then_stall(state, batch):
    calls.append(1)
    if len(calls) > 10:  # Steps 9 and 10 ran after the checkpoint at 8.
      pathlib.Path(sys.argv[3]).touch()
      time.sleep(3600)  # Stalled mid-run until the test kills us.
    return steps.train_step(state, batch)

  return steps._replace(train_step=step_then_stall)

steps_lib.make_steps = stalling_steps
train.train_and_evaluate(config, sys.argv[1])
"""


def _finished_steps(workdir):
  path = workdir / "checkpoints"
  if not path.exists():
    return []
  # orbax writes into a temporary folder and renames it when complete.
  return sorted(int(p.name) for p in path.iterdir() if p.name.isdigit())


def _step_records(workdir):
  lines = (workdir / "metrics.jsonl").read_text().splitlines()
  records = [json.loads(line) for line in lines]
  return [r for r in records if r["kind"] == "step"], records


def test_sigkill_mid_run_then_resume_matches_uninterrupted_run(tmp_path):
  killed = tmp_path / "killed"
  fields = CONFIG.to_json()
  script = tmp_path / "child.py"
  script.write_text(textwrap.dedent(_CHILD))
  stalled = tmp_path / "stalled"
  child = subprocess.Popen(
    [sys.executable, str(script), str(killed), json.dumps(fields), stalled],
    env=dict(os.environ),
    stdout=subprocess.DEVNULL,
    stderr=subprocess.PIPE,
  )
  try:
    deadline = time.monotonic() + 300
    while not (stalled.exists() and 8 in _finished_steps(killed)):
      assert child.poll() is None, child.stderr.read().decode()[-3000:]
      assert time.monotonic() < deadline, "the child never reached step 10"
      time.sleep(0.05)
    child.send_signal(signal.SIGKILL)
    assert child.wait(timeout=60) == -signal.SIGKILL
  finally:
    if child.poll() is None:
      child.kill()
      child.wait()
  assert _finished_steps(killed) == [4, 6, 8]
  steps_before, _ = _step_records(killed)
  assert [r["step"] for r in steps_before] == list(range(1, 11))

  resumed = train.train_and_evaluate(CONFIG, killed)
  uninterrupted = train.train_and_evaluate(CONFIG, tmp_path / "whole")

  assert resumed == uninterrupted
  assert resumed["step"] == TOTAL_STEPS and len(resumed["history"]) == 3
  assert resumed.state.step == TOTAL_STEPS
  _, resumed_vars = train.load_variables(killed)
  _, whole_vars = train.load_variables(tmp_path / "whole")
  assert set(resumed_vars) == {"params", "batch_stats"}
  jax.tree_util.tree_map(
    np.testing.assert_array_equal, resumed_vars, whole_vars
  )  # bitwise: assert_array_equal has no tolerance.
  resumed_steps, resumed_all = _step_records(killed)
  whole_steps, _ = _step_records(tmp_path / "whole")
  assert resumed_steps == whole_steps
  assert [r["step"] for r in resumed_steps] == list(range(1, 19))
  resumes = [r["step"] for r in resumed_all if r["kind"] == "resume"]
  assert resumes == [8]


def test_default_command_killed_after_its_first_epoch_resumes_there(tmp_path):
  """`python -m experiments.train` with default checkpointing, killed."""
  workdir = tmp_path / "cnn"
  command = [
    sys.executable,
    "-m",
    "experiments.train",
    "--model=cnn",
    "--num_epochs=2",
    f"--workdir={workdir}",
    "--noprogress",
  ]
  repo = pathlib.Path(__file__).resolve().parent.parent
  child = subprocess.Popen(
    command, cwd=repo, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
  )
  try:
    deadline = time.monotonic() + 600
    # 4,000 digits / 128 = 31 steps per epoch: the first epoch's end.
    while 31 not in _finished_steps(workdir):
      assert child.poll() is None, child.stderr.read().decode()[-3000:]
      assert time.monotonic() < deadline, "no checkpoint after epoch 1"
      time.sleep(0.05)
    child.send_signal(signal.SIGKILL)
    assert child.wait(timeout=60) == -signal.SIGKILL
  finally:
    if child.poll() is None:
      child.kill()
      child.wait()
  assert 62 not in _finished_steps(workdir)
  done = subprocess.run(
    command, cwd=repo, capture_output=True, text=True, timeout=600
  )
  assert done.returncode == 0, done.stderr[-3000:]
  assert "Resuming" in done.stderr and "from step 31" in done.stderr
  _, records = _step_records(workdir)
  assert [r["step"] for r in records if r["kind"] == "resume"] == [31]
  epochs = [r["epoch"] for r in records if r["kind"] == "epoch"]
  assert epochs == [1, 2]  # Epoch 1 was not redone, nor written twice.
  results = json.loads((workdir / "results.json").read_text())
  assert results["final"]["step"] == 62
