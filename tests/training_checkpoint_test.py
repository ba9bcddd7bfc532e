"""Faults a run survives: damaged checkpoints, a shared workdir, full disks.

Each test makes the fault for real where it can (a truncated data file, an
emptied metadata file, a second process holding the lock, a process killed
with the lock held, a tmpfs that fills up) and checks the run's one-line
report and what it leaves in the workdir.
"""

import asyncio
import dataclasses
import errno
import gc
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import orbax.checkpoint as ocp
import pytest

from equivlab import train
from equivlab.training import checkpoint

# 128 examples / 32 = 4 steps per epoch, 3 epochs: checkpoints 4, 8, 12.
CONFIG = train.TrainConfig(
  model="mlp",
  model_kwargs={"hidden_sizes": (8,)},
  train_limit=128,
  test_limit=64,
  num_epochs=3,
  batch_size=32,
  max_checkpoints=5,
  num_devices=1,
  progress=False,
)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
  """An uninterrupted run: its workdir and result."""
  workdir = tmp_path_factory.mktemp("finished")
  return workdir, train.train_and_evaluate(CONFIG, workdir)


def _copy(finished, tmp_path):
  workdir = tmp_path / "run"
  shutil.copytree(finished[0], workdir)
  return workdir


def _truncate_data(step_dir):
  files = [
    p
    for p in (step_dir / "state").rglob("*")
    if p.is_file() and p.parent.name == "d"
  ]
  assert files
  for path in files:
    os.truncate(path, 5)


@pytest.mark.parametrize("damage", ["truncated data", "emptied _METADATA"])
def test_damaged_newest_checkpoint_falls_back_to_the_previous_one(
  finished, tmp_path, caplog, capfd, damage
):
  workdir = _copy(finished, tmp_path)
  newest = workdir / "checkpoints" / "12"
  if damage == "truncated data":
    _truncate_data(newest)
  else:
    (newest / "state" / "_METADATA").write_text("")
  with caplog.at_level(logging.WARNING):
    result = train.train_and_evaluate(CONFIG, workdir)
  # Redone from step 8: bitwise the uninterrupted run.
  assert result == finished[1]
  # One line names the damaged step, why, where it went and what is used.
  (report,) = [
    r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING
  ]
  assert report.startswith("Checkpoint at step 12 in ")
  assert "cannot be restored (" in report
  assert f"moved to {workdir / 'damaged_checkpoints'}" in report
  assert report.endswith("; using step 8 instead.")
  printed = capfd.readouterr()
  assert "Exception ignored" not in printed.err + printed.out
  moved = list((workdir / "damaged_checkpoints").iterdir())
  assert [p.name.split("-")[0] for p in moved] == ["12"]
  records = [json.loads(line) for line in (workdir / "metrics.jsonl").open()]
  epochs = [r["step"] for r in records if r["kind"] == "epoch"]
  assert epochs == [4, 8, 12]  # Never written twice.


def test_no_intact_checkpoint_starts_over_and_says_so(
  finished, tmp_path, caplog
):
  workdir = _copy(finished, tmp_path)
  for step_dir in (workdir / "checkpoints").iterdir():
    if step_dir.name.isdigit():
      (step_dir / "meta" / "metadata").write_text("{")
  with caplog.at_level(logging.WARNING):
    result = train.train_and_evaluate(CONFIG, workdir)
  assert result == finished[1]
  (report,) = [
    r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING
  ]
  assert report.startswith("Checkpoints at steps 12, 8, 4 in ")
  assert report.endswith(
    "no intact checkpoint is left: starting over from step 0."
  )


def test_load_variables_skips_a_damaged_newest_but_names_a_damaged_step(
  finished, tmp_path
):
  workdir = _copy(finished, tmp_path)
  _truncate_data(workdir / "checkpoints" / "12")
  _, variables = train.load_variables(workdir)  # step 8, read only
  assert (workdir / "checkpoints" / "12").exists()
  with pytest.raises(
    ValueError, match="checkpoint of step 12 .* cannot be read"
  ):
    train.load_variables(workdir, step=12)
  assert variables["params"]["Dense_0"]["kernel"].shape == (784, 8)


def test_a_failed_orbax_operation_leaves_no_task_behind():
  # The shape of a failed restore: one read raises while a sibling read is
  # still pending. orbax's own loop closes around the sibling, which is
  # destroyed later with an "Exception ignored in: <coroutine ...>".
  from orbax.checkpoint._src import asyncio_utils  # noqa: PLC0415

  finished = []

  async def restore():
    async def sibling():
      try:
        await asyncio.sleep(60)
      finally:
        await asyncio.sleep(0)  # needs a live loop
        finished.append(True)

    asyncio.ensure_future(sibling())
    await asyncio.sleep(0)
    raise ValueError("damaged")

  unraisable = []
  hook = sys.unraisablehook
  sys.unraisablehook = unraisable.append
  try:
    with checkpoint.settled_event_loops(), pytest.raises(ValueError):
      asyncio_utils.run_sync(restore())
    gc.collect()
  finally:
    sys.unraisablehook = hook
  assert unraisable == [] and finished == [True]


_HOLD_LOCK = """
import pathlib, sys, time
from equivlab.training import checkpoint
with checkpoint.WorkdirLock(sys.argv[1]):
  pathlib.Path(sys.argv[2]).touch()
  time.sleep(600)
"""


def _hold_lock(tmp_path, workdir):
  script = tmp_path / "hold.py"
  script.write_text(textwrap.dedent(_HOLD_LOCK))
  ready = tmp_path / "ready"
  child = subprocess.Popen(
    [sys.executable, str(script), str(workdir), str(ready)]
  )
  deadline = time.monotonic() + 120
  while not ready.exists():
    assert child.poll() is None and time.monotonic() < deadline
    time.sleep(0.05)
  return child


def test_a_workdir_in_use_is_refused_naming_the_other_run(tmp_path):
  workdir = tmp_path / "run"
  child = _hold_lock(tmp_path, workdir)
  try:
    with pytest.raises(
      checkpoint.WorkdirInUseError,
      match=rf"in use by another run \(pid {child.pid} on host ",
    ):
      train.train_and_evaluate(CONFIG, workdir)
  finally:
    child.kill()
    child.wait()
  assert not (workdir / "metrics.jsonl").exists()


def test_a_lock_left_by_a_killed_run_is_taken_over(tmp_path, caplog):
  workdir = tmp_path / "run"
  child = _hold_lock(tmp_path, workdir)
  child.send_signal(signal.SIGKILL)
  child.wait()
  assert str(child.pid) in (workdir / ".lock").read_text()
  with caplog.at_level(logging.WARNING):
    train.train_and_evaluate(dataclasses.replace(CONFIG, num_epochs=1), workdir)
  assert any(
    f"Taking over the lock of pid {child.pid}" in r.getMessage()
    for r in caplog.records
  )
  assert (workdir / ".lock").read_text() == ""  # Released at the end.


def test_a_workdir_that_is_a_file_is_one_clear_error(tmp_path):
  path = tmp_path / "file"
  path.write_text("x")
  with pytest.raises(checkpoint.CheckpointWriteError, match="is a file"):
    train.train_and_evaluate(CONFIG, path)
  with pytest.raises(checkpoint.CheckpointWriteError, match="is a file"):
    train.train_and_evaluate(CONFIG, path / "below")


def test_a_read_only_workdir_is_one_clear_error(tmp_path, monkeypatch):
  # As on a read-only mount (root ignores permission bits, so the error is
  # raised where the OS would raise it).
  original = type(tmp_path).mkdir

  def mkdir(self, *args, **kwargs):
    if self.name == "run":
      raise OSError(errno.EROFS, "Read-only file system", str(self))
    return original(self, *args, **kwargs)

  monkeypatch.setattr(type(tmp_path), "mkdir", mkdir)
  with pytest.raises(
    checkpoint.CheckpointWriteError,
    match=r"cannot create workdir .*run: Read-only file system \(EROFS\)",
  ) as info:
    train.train_and_evaluate(CONFIG, tmp_path / "run")
  assert info.value.errno == errno.EROFS


def test_checkpoints_at_epoch_ends_and_by_the_clock(tmp_path):
  # Defaults: every epoch end (4, 8, 12); a clock period shorter than a
  # step: every step; a step period: its multiples and the epoch ends.
  cases = {
    "epochs": (dict(checkpoint_every_secs=3600.0), [4, 8, 12]),
    "clock": (dict(checkpoint_every_secs=1e-9), list(range(1, 13))),
    "steps": (
      dict(checkpoint_every_secs=None, checkpoint_every_steps=3),
      [3, 4, 6, 8, 9, 12],
    ),
  }
  for name, (overrides, steps) in cases.items():
    config = dataclasses.replace(CONFIG, max_checkpoints=20, **overrides)
    train.train_and_evaluate(config, tmp_path / name)
    saved = sorted(
      int(p.name) for p in (tmp_path / name / "checkpoints").iterdir()
    )
    assert saved == steps, name


def test_a_failing_save_is_one_error_and_leaves_no_temporary_folder(
  tmp_path, monkeypatch
):
  original = ocp.CheckpointManager.save

  def save(self, step, *args, **kwargs):
    if step == 8:
      (self.directory / "8.orbax-checkpoint-tmp-123").mkdir()
      raise OSError(errno.ENOSPC, "No space left on device")
    return original(self, step, *args, **kwargs)

  monkeypatch.setattr(ocp.CheckpointManager, "save", save)
  workdir = tmp_path / "run"
  with pytest.raises(
    checkpoint.CheckpointWriteError,
    match=r"checkpoint of step 8 to .*checkpoints: No space left on device "
    r"\(ENOSPC\)\. Free space",
  ) as info:
    train.train_and_evaluate(CONFIG, workdir)
  assert info.value.errno == errno.ENOSPC
  assert info.value.__cause__ is None and info.value.__suppress_context__
  left = sorted(p.name for p in (workdir / "checkpoints").iterdir())
  assert left == ["4"]


def test_metrics_that_cannot_be_written_are_one_clear_error(tmp_path):
  workdir = tmp_path / "run"
  (workdir / "metrics.jsonl").mkdir(parents=True)
  with pytest.raises(checkpoint.CheckpointWriteError, match="metrics.jsonl"):
    train.train_and_evaluate(CONFIG, workdir)


def test_nan_before_any_checkpoint_says_none_was_kept(tmp_path):
  config = dataclasses.replace(
    CONFIG, optimizer="sgd", learning_rate=1e30, log_every_steps=1
  )
  with pytest.raises(
    FloatingPointError, match="No checkpoint had been written yet"
  ):
    train.train_and_evaluate(config, tmp_path / "run")


_FILL = """
import os, sys
from experiments import _common, train as experiment
_common.launch(experiment.main, experiment.define_flags)
"""


def test_disk_full_mid_run_in_a_real_process(tmp_path):
  """A tmpfs too small for the first checkpoint (Linux, root: else skip)."""
  mount = tmp_path / "small"
  mount.mkdir()
  made = subprocess.run(
    ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)],
    capture_output=True,
  )
  if made.returncode != 0:
    pytest.skip("cannot mount a tmpfs here: " + made.stderr.decode()[:100])
  try:
    # About 100 kB free: less than the first checkpoint (~160 kB).
    (mount / "filler").write_bytes(bytes(920_000))
    command = [
      sys.executable,
      "-m",
      "experiments.train",
      "--model=mlp",
      '--model_kwargs={"hidden_sizes": [16]}',
      "--num_epochs=2",
      "--train_limit=256",
      "--test_limit=64",
      "--batch_size=32",
      "--num_devices=1",
      "--noprogress",
      f"--workdir={mount / 'run'}",
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr and "meta_path" not in done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("error: [Errno 28] cannot write the checkpoint of")
    assert "No space left on device (ENOSPC)" in last
    assert not any(
      "orbax-checkpoint-tmp" in p.name for p in (mount / "run").rglob("*")
    )
    (mount / "filler").unlink()  # Space freed: the same command completes.
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads((mount / "run" / "results.json").read_text())
    assert results["final"]["step"] == 16
  finally:
    subprocess.run(["umount", str(mount)], capture_output=True)


def test_resumed_results_keep_float32_arrays(finished):
  _, result = finished
  kernel = result.params["Dense_0"]["kernel"]
  assert isinstance(kernel, np.ndarray) and kernel.dtype == np.float32
