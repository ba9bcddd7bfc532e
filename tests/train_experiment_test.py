"""Smoke tests of experiments/train.py, on one process and on two."""

import json
import os
import pathlib
import socket
import subprocess
import sys

import numpy as np
import pytest
from absl import flags

from experiments import train as train_experiment

_REPO = pathlib.Path(__file__).resolve().parent.parent
_TIMEOUT_S = 240
# Tiny settings: 2 steps of a small MLP with a global batch of 32 on 4
# devices (4 devices in one process, or 2 processes with 2 devices each).
_FLAGS = {
  "model": "mlp",
  "model_kwargs": '{"hidden_sizes": [16]}',
  "num_epochs": 1,
  "batch_size": 32,
  "optimizer": "momentum",
  "learning_rate": 0.05,
  "train_limit": 64,
  "test_limit": 32,
  "progress": False,
}


def _free_port() -> int:
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
    sock.bind(("127.0.0.1", 0))
    return sock.getsockname()[1]


def _run_one_process(workdir):
  # The launcher's own flags, parsed from a command line, in a private
  # FlagValues (other experiments define --workdir too).
  flag_values = flags.FlagValues()
  holders = train_experiment.define_flags(flag_values)
  argv = [f"--{name}={value}" for name, value in _FLAGS.items()]
  argv += [f"--workdir={workdir}", "--num_devices=4"]
  flag_values(["train", *argv])
  train_experiment.main(["train"], holders)


def _run_two_processes(workdir, logdir):
  address = f"127.0.0.1:{_free_port()}"
  flags_ = [f"--{name}={value}" for name, value in _FLAGS.items()]
  flags_ += [
    f"--workdir={workdir}",
    f"--coordinator_address={address}",
    "--num_processes=2",
    "--distributed_timeout_s=120",
  ]
  env = dict(os.environ)
  env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
  env["JAX_PLATFORMS"] = "cpu"
  procs, logs = [], []
  for pid in range(2):
    logs.append(logdir / f"log_{pid}.txt")
    with logs[-1].open("w") as log:
      procs.append(
        subprocess.Popen(
          [sys.executable, "-m", "experiments.train", *flags_]
          + [f"--process_id={pid}"],
          cwd=_REPO,
          env=env,
          stdout=log,
          stderr=subprocess.STDOUT,
        )
      )
  try:
    for proc in procs:
      proc.wait(timeout=_TIMEOUT_S)
  finally:
    for proc in procs:
      if proc.poll() is None:  # Hung: never let it outlive the test.
        proc.kill()
        proc.wait()
  for proc, log in zip(procs, logs, strict=True):
    assert proc.returncode == 0, log.read_text()[-3000:]


def test_main_one_process_then_two_processes(tmp_path):
  # One test, not two sharing a fixture: under pytest-xdist a module
  # fixture would run once per worker.
  one_dir = tmp_path / "one_process"
  _run_one_process(one_dir)
  one = json.loads((one_dir / "results.json").read_text())
  assert one["num_devices"] == 4 and one["num_processes"] == 1
  assert one["config"]["model"] == "mlp"
  assert one["final"]["step"] == 2
  assert len(one["history"]) == 1
  assert 0.0 <= one["final"]["test_accuracy"] <= 1.0
  png = (one_dir / "learning_curves.png").read_bytes()
  assert png.startswith(b"\x89PNG")
  assert (one_dir / "metrics.jsonl").exists()
  assert (one_dir / "checkpoints").is_dir()

  two_dir = tmp_path / "two_processes"
  _run_two_processes(two_dir, tmp_path)
  two = json.loads((two_dir / "results.json").read_text())
  assert two["num_processes"] == 2 and two["num_devices"] == 4
  # train.py gives every process its rows of the same global batches, so
  # the run is the single-process run with the same global batch.
  for name in ("train_loss", "train_accuracy", "test_loss", "test_accuracy"):
    np.testing.assert_allclose(
      two["final"][name], one["final"][name], rtol=1e-5
    )
  # Process 0 alone wrote the metrics: one record per epoch, no doubles.
  records = (two_dir / "metrics.jsonl").read_text().splitlines()
  assert sum(json.loads(r)["kind"] == "epoch" for r in records) == 1


def test_config_rejects_several_processes_without_coordinator():
  with pytest.raises(ValueError, match="coordinator_address must be"):
    train_experiment.LaunchConfig(num_processes=2)


def test_config_rejects_process_id_out_of_range():
  with pytest.raises(
    ValueError, match=r"process_id must be an int in \[0, 1\]"
  ):
    train_experiment.LaunchConfig(
      coordinator_address="127.0.0.1:1234", num_processes=2, process_id=2
    )


@pytest.mark.parametrize(
  ("argv", "message"),
  [
    (["--learning_rate=nan"], "flag --learning_rate=nan: learning_rate must"),
    (["--num_epochs=0"], "flag --num_epochs=0: num_epochs must be an int >= 1"),
    (["--model_kwargs={norm: batch}"], "--model_kwargs must be JSON"),
    (["--momentum=1"], "momentum must be a finite number >= 0 and < 1"),
    (["--num_processes=2"], "coordinator_address must be host:port"),
  ],
)
def test_bad_flags_are_flag_errors_naming_the_flag(argv, message):
  flag_values = flags.FlagValues()
  train_experiment.define_flags(flag_values)
  with pytest.raises(flags.IllegalFlagValueError, match=message):
    flag_values(["train", *argv])


def test_model_kwargs_flag_is_a_json_object():
  flag_values = flags.FlagValues()
  holders = train_experiment.define_flags(flag_values)
  flag_values(["train", '--model_kwargs={"features": [4, 8]}'])
  assert holders.config().model_kwargs == (("features", (4, 8)),)
