"""Two real JAX processes train through the library loop (issue 16 item 6).

Each test starts Python interpreters that meet through `jax.distributed` at
127.0.0.1 (CPU collectives: gloo), each with one CPU device, so the mesh
spans 2 devices in 2 processes, and each calls `train.train_and_evaluate`
itself on one shared workdir. Every subprocess
runs under a hard timeout and is killed if it hangs.
"""

import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np

from equivlab import train

_REPO = pathlib.Path(__file__).resolve().parent.parent
_TIMEOUT_S = 240
_NUM_PROCESSES = 2
_LOCAL_DEVICES = 1

# 64 digits / 16 = 4 steps per epoch, 2 epochs; checkpoints at 2, 4, 6, 8.
# Batch norm and dropout: the statistics must be those of the global batch.
CONFIG = train.TrainConfig(
  model="cnn",
  model_kwargs={
    "features": (4, 8),
    "dense_features": 16,
    "norm": "batch",
    "dropout_rate": 0.1,
  },
  train_limit=64,
  test_limit=32,
  num_epochs=2,
  batch_size=16,
  eval_batch_size=16,
  optimizer="momentum",
  learning_rate=0.05,
  checkpoint_every_steps=2,
  max_checkpoints=10,
  log_every_steps=1,
  progress=False,
)


def _free_port() -> int:
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
    sock.bind(("127.0.0.1", 0))
    return sock.getsockname()[1]


def _worker_env(local_devices=_LOCAL_DEVICES):
  env = dict(os.environ)
  env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={local_devices}"
  env["JAX_PLATFORMS"] = "cpu"
  env["PYTHONPATH"] = os.pathsep.join(
    [str(_REPO), env.get("PYTHONPATH", "")]
  ).rstrip(os.pathsep)
  return env


def _start(workdir, logdir, stall=None):
  """Starts the two workers; `stall` = (process id, step) to stall at."""
  address = f"127.0.0.1:{_free_port()}"
  procs = []
  for pid in range(_NUM_PROCESSES):
    code = (
      "from tests.multiprocess_test import _worker; "
      f"_worker({address!r}, {pid}, {str(workdir)!r}, {stall!r})"
    )
    with (logdir / f"log_{pid}.txt").open("w") as log:
      procs.append(
        subprocess.Popen(
          [sys.executable, "-c", code],
          cwd=_REPO,
          env=_worker_env(),
          stdout=log,
          stderr=subprocess.STDOUT,
        )
      )
  return procs


def _finish(procs, logdir):
  try:
    for proc in procs:
      proc.wait(timeout=_TIMEOUT_S)
  finally:
    for proc in procs:
      if proc.poll() is None:  # Hung: never let it outlive the test.
        proc.kill()
        proc.wait()
  for pid, proc in enumerate(procs):
    output = (logdir / f"log_{pid}.txt").read_text()
    assert proc.returncode == 0, f"rc={proc.returncode}\n{output[-3000:]}"


def _worker(address, process_id, workdir, stall=None):
  """One process of the run: joins, trains, saves what it ended with."""
  from equivlab import parallel  # noqa: PLC0415
  from equivlab.training import steps as steps_lib  # noqa: PLC0415

  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  parallel.initialize_distributed(
    address, _NUM_PROCESSES, process_id, timeout_s=120
  )
  workdir = pathlib.Path(workdir)
  if stall is not None and stall[0] == process_id:
    _stall_at(steps_lib, stall[1], workdir / f"stalled_{process_id}")
  result = train.train_and_evaluate(CONFIG, workdir)
  _save_result(result, workdir, process_id)


def _save_result(result, workdir, name):
  flat = jax.tree_util.tree_flatten_with_path(result.variables)[0]
  np.savez(
    workdir / f"variables_{name}.npz",
    **{jax.tree_util.keystr(path): leaf for path, leaf in flat},
  )
  (workdir / f"metrics_{name}.json").write_text(json.dumps(result.metrics))


def _one_process(workdir):
  """The same run in one process of 2 devices (a fresh interpreter, set
  up as the workers are: the test process has 8 devices)."""
  config = CONFIG.__class__(
    **{**CONFIG.to_json(), "num_devices": _NUM_PROCESSES * _LOCAL_DEVICES}
  )
  workdir = pathlib.Path(workdir)
  _save_result(train.train_and_evaluate(config, workdir), workdir, "one")


def _stall_at(steps_lib, step, flag):
  make_steps = steps_lib.make_steps

  def stalling(*args):
    steps = make_steps(*args)
    calls = []

    def train_step(state, batch):
      calls.append(1)
      if len(calls) == step:
        flag.touch()
        time.sleep(3600)  # Until the test kills this process.
      return steps.train_step(state, batch)

    return steps._replace(train_step=train_step)

  steps_lib.make_steps = stalling


def _variables(workdir, pid):
  return dict(np.load(workdir / f"variables_{pid}.npz"))


def _records(workdir):
  lines = (workdir / "metrics.jsonl").read_text().splitlines()
  return [json.loads(line) for line in lines]


def test_two_processes_train_through_the_loop_like_one(tmp_path):
  two = tmp_path / "two"
  _finish(_start(two, tmp_path), tmp_path)
  ours = [_variables(two, pid) for pid in range(_NUM_PROCESSES)]
  assert ours[0].keys() == ours[1].keys() and any(
    "batch_stats" in k for k in ours[0]
  )
  for name in ours[0]:  # Both processes end with bitwise the same state.
    np.testing.assert_array_equal(ours[0][name], ours[1][name])
  # Only process 0 wrote metrics: every step and epoch once.
  records = _records(two)
  assert [r["step"] for r in records if r["kind"] == "step"] == list(
    range(1, 9)
  )
  assert [r["epoch"] for r in records if r["kind"] == "epoch"] == [1, 2]
  assert len(list((two / "tensorboard").iterdir())) == 1

  # The same global batches on the 2 devices of ONE process: bitwise the
  # same run (batch norm statistics and gradients over the global batch;
  # gloo sums across processes what XLA sums within one).
  one = tmp_path / "one"
  done = subprocess.run(
    [
      sys.executable,
      "-c",
      f"from tests.multiprocess_test import _one_process; "
      f"_one_process({str(one)!r})",
    ],
    cwd=_REPO,
    env=_worker_env(_NUM_PROCESSES * _LOCAL_DEVICES),
    capture_output=True,
    text=True,
    timeout=_TIMEOUT_S,
  )
  assert done.returncode == 0, done.stderr[-3000:]
  single = dict(np.load(one / "variables_one.npz"))
  assert single.keys() == ours[0].keys()
  for name in single:
    np.testing.assert_array_equal(ours[0][name], single[name])
  metrics = json.loads((two / "metrics_0.json").read_text())
  assert metrics == json.loads((one / "metrics_one.json").read_text())

  # Killed mid-run (one process stalls after the checkpoint at 4, is killed,
  # the other with it), the same two commands resume to bitwise the end of
  # the uninterrupted two-process run.
  killed = tmp_path / "killed"
  procs = _start(killed, tmp_path, stall=(1, 6))
  try:
    deadline = time.monotonic() + _TIMEOUT_S
    while not (
      (killed / "stalled_1").exists()
      and (killed / "checkpoints" / "4").is_dir()
    ):
      assert all(p.poll() is None for p in procs), "a worker ended early"
      assert time.monotonic() < deadline, "the run never reached step 6"
      time.sleep(0.05)
    procs[1].send_signal(signal.SIGKILL)
    procs[0].send_signal(signal.SIGKILL)
  finally:
    for proc in procs:
      if proc.poll() is None:
        proc.kill()
      proc.wait()
  _finish(_start(killed, tmp_path), tmp_path)
  resumed = _variables(killed, 0)
  for name in ours[0]:
    np.testing.assert_array_equal(resumed[name], ours[0][name])
  resumes = [r["step"] for r in _records(killed) if r["kind"] == "resume"]
  assert resumes and resumes[0] >= 4
  steps = [r["step"] for r in _records(killed) if r["kind"] == "step"]
  assert steps == list(range(1, 9))  # Replayed steps not written twice.
