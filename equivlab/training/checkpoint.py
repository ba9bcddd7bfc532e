"""Checkpoints that survive damage, a lock per workdir, clear write errors.

- `Checkpointer` wraps an orbax `CheckpointManager` on
  `<workdir>/checkpoints`. `restore_latest` restores the newest checkpoint
  that can be read; one that cannot (truncated data, an emptied metadata
  file) is moved to `<workdir>/damaged_checkpoints/` and the next older
  one is tried; one warning line names the damaged steps, why, and the
  step used instead (or that the run starts over). orbax's event loops
  finish every task they start, so a failed read leaves nothing to
  print later, and orbax's own log notes stay out. A save returns once the
  checkpoint is on disk and turns any failure to write (disk full,
  read-only, the workdir a file) into one `CheckpointWriteError` naming
  the path, leaving no temporary directory behind. Runs in several threads
  of one process take turns with orbax.
- `WorkdirLock` keeps two live runs out of one workdir. It is an OS file
  lock (`fcntl.flock`) on `<workdir>/.lock`, which the kernel releases when
  its process dies, even by SIGKILL; the file names the holder (pid, host,
  start time), so a second run is refused with a message naming the first,
  and a lock left behind by a killed run is recognised and taken over.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import errno
import fcntl
import functools
import gc
import json
import logging
import os
import pathlib
import re
import shutil
import socket
import sys
import threading
from collections.abc import Callable
from typing import Any

import jax
import orbax.checkpoint as ocp
from orbax.checkpoint._src import asyncio_utils

from equivlab import parallel

_TMP_MARKER = ".orbax-checkpoint-tmp"


class WorkdirInUseError(RuntimeError):
  """Another live run holds the workdir's lock."""


class CheckpointWriteError(OSError):
  """A checkpoint or metrics file could not be written."""


def _reason(error: BaseException) -> str:
  """`error` as one short line: its type and the start of its message.

  tensorstore's errors end with the OS error code (`[os_error_code='28']`)
  after a long path; that code's name ("No space left on device") is the
  whole story, so it is what the line says.
  """
  if isinstance(error, OSError) and error.strerror:
    name = errno.errorcode.get(error.errno, error.errno)
    where = f" ({error.filename})" if error.filename else ""
    return f"{error.strerror} ({name}){where}"
  text = " ".join(str(error).split())
  code = re.search(r"os_error_code='?(\d+)", text)
  if code:
    number = int(code.group(1))
    return f"{os.strerror(number)} ({errno.errorcode.get(number, number)})"
  if len(text) > 200:
    text = text[:197] + "..."
  return f"{type(error).__name__}: {text}" if text else type(error).__name__


_ADVICE = (
  ". Free space or fix the permissions, then run the same command again to "
  "resume from the last checkpoint"
)


@contextlib.contextmanager
def write_errors(
  what: str,
  *,
  kinds: tuple[type[BaseException], ...] = (OSError,),
  advice: str = "",
):
  """Turns a failure of `kinds` inside into one `CheckpointWriteError`.

  The error names `what` could not be written and why, in one line, with
  the original traceback left out (it is noise to the user: the cause is
  the disk or the path, not the code).
  """
  try:
    yield
  except CheckpointWriteError:
    raise
  except kinds as error:
    code = getattr(error, "errno", None)
    found = re.search(r"os_error_code='?(\d+)", str(error))
    code = code or (int(found.group(1)) if found else errno.EIO)
    raise CheckpointWriteError(
      code, f"cannot write {what}: {_reason(error)}{advice}"
    ) from None


def ensure_directory(path: pathlib.Path, what: str = "workdir") -> None:
  """Creates `path`; a clear `CheckpointWriteError` if that cannot be done."""
  try:
    path.mkdir(parents=True, exist_ok=True)
  except (FileExistsError, NotADirectoryError) as error:
    raise CheckpointWriteError(
      errno.ENOTDIR,
      f"{what} {path} cannot be used: it (or a parent) is a file, not a "
      "directory; pass a directory path",
    ) from error
  except OSError as error:
    raise CheckpointWriteError(
      error.errno, f"cannot create {what} {path}: {_reason(error)}"
    ) from error
  if not os.access(path, os.W_OK | os.X_OK):
    raise CheckpointWriteError(
      errno.EACCES, f"{what} {path} is not writable by this user"
    )


class WorkdirLock:
  """An exclusive, crash-safe lock on a workdir (see the module docstring).

  Use as a context manager. Only process 0 of a multi-process run takes it
  (the others share process 0's workdir).
  """

  def __init__(self, workdir: str | os.PathLike):
    self.path = pathlib.Path(workdir).absolute() / ".lock"
    self._file = None

  def __enter__(self) -> WorkdirLock:
    ensure_directory(self.path.parent)
    try:
      handle = open(self.path, "a+")  # noqa: SIM115 (held until __exit__)
    except OSError as error:
      raise CheckpointWriteError(
        error.errno, f"cannot open the lock file {self.path}: {_reason(error)}"
      ) from error
    try:
      fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      holder = _read_holder(handle)
      handle.close()
      raise WorkdirInUseError(
        f"workdir {self.path.parent} is in use by another run ({holder}); "
        "wait for it to finish, or pass another --workdir."
      ) from None
    previous = _read_holder(handle, default=None)
    if previous is not None:
      logging.warning(
        "Taking over the lock of %s: that run ended without releasing "
        "it (killed?) and holds it no longer.",
        previous,
      )
    handle.seek(0)
    handle.truncate()
    handle.write(json.dumps(_this_process()) + "\n")
    handle.flush()
    self._file = handle
    return self

  def __exit__(self, *exc_info) -> None:
    if self._file is None:
      return
    with contextlib.suppress(OSError):
      self._file.seek(0)
      self._file.truncate()
    fcntl.flock(self._file, fcntl.LOCK_UN)
    self._file.close()
    self._file = None


def _this_process() -> dict[str, Any]:
  return {
    "pid": os.getpid(),
    "host": socket.gethostname(),
    "started": datetime.datetime.now().isoformat(timespec="seconds"),
    "command": " ".join(sys.argv)[:200],
  }


def _read_holder(handle, default: str | None = "pid unknown") -> str | None:
  handle.seek(0)
  text = handle.read().strip()
  if not text:
    return default
  try:
    info = json.loads(text)
    return (
      f"pid {info['pid']} on host {info['host']}, started "
      f"{info['started']}: {info.get('command', '')}"
    )
  except (ValueError, KeyError, TypeError):
    return default if default is None else f"unreadable lock file: {text!r}"


def _cancel_pending(loop: asyncio.AbstractEventLoop) -> None:
  """Cancels the loop's unfinished tasks and runs them to their end."""
  for _ in range(3):  # all_tasks may race with loops of other threads
    try:
      pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
      break
    except RuntimeError:
      continue
  else:
    return
  for task in pending:
    task.cancel()
  if pending:
    loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))


def _run_until_settled(coro):
  """Runs `coro` in a fresh event loop that ends no task half-way.

  orbax runs each operation in a fresh event loop and closes it as soon as
  the operation's coroutine returns or raises. When one read of a damaged
  checkpoint fails, the operation raises while its sibling reads are still
  pending; a loop closed around them leaves tasks that are destroyed
  later, each printed as "Task was destroyed but it is pending!" and
  "Exception ignored in: <coroutine ...>". Here the loop cancels them and
  lets them finish, and shuts its async generators down, before it
  closes.
  """
  loop = asyncio.new_event_loop()
  try:
    asyncio.set_event_loop(loop)
    return loop.run_until_complete(coro)
  finally:
    try:
      _cancel_pending(loop)
      loop.run_until_complete(loop.shutdown_asyncgens())
    finally:
      asyncio.set_event_loop(None)
      loop.close()


@contextlib.contextmanager
def settled_event_loops():
  """orbax's synchronous operations run in `_run_until_settled` loops.

  orbax's `asyncio_utils.run_sync` runs a coroutine with
  `_run_sync_via_new_loop` when no loop is running; inside this context
  that function is `_run_until_settled`. Not reentrant across threads:
  `Checkpointer` enters it only while holding its turn.
  """
  original = getattr(asyncio_utils, "_run_sync_via_new_loop", None)
  if original is None:  # another orbax version: nothing to replace
    yield
    return
  asyncio_utils._run_sync_via_new_loop = _run_until_settled
  try:
    yield
  finally:
    asyncio_utils._run_sync_via_new_loop = original


@contextlib.contextmanager
def _absl_warnings_off():
  """Drops absl's WARNING records (orbax's notes on read-only managers)."""
  logger = logging.getLogger("absl")
  level = logger.level
  logger.setLevel(logging.ERROR)
  try:
    yield
  finally:
    logger.setLevel(level)


def without_closed_loop_noise(hook: Callable[[Any], None]):
  """`hook` (a `sys.unraisablehook`) minus tensorstore's closed-loop noise.

  A tensorstore read or write cancelled with its task (see
  `_run_until_settled`) may still complete in tensorstore's own thread and
  try to wake the loop that was waiting for it, which is closed by then;
  Python reports that through `sys.unraisablehook` as "Exception ignored
  ... Event loop is closed". The returned hook drops exactly those and
  passes everything else to `hook`.
  """

  def filtered(unraisable):
    error = unraisable.exc_value
    if isinstance(error, RuntimeError) and "Event loop is closed" in str(error):
      return
    hook(unraisable)

  return filtered


@contextlib.contextmanager
def _quiet_failed_io(collect: bool = False):
  """Settled event loops and `without_closed_loop_noise` while inside.

  Only a failure leaves operations to finalise, and a full collection
  is costly in a large process, so it runs on the way out of an
  exception, and on every exit once `collect` is set (a `Checkpointer`
  sets it after its first failure).
  """
  previous = sys.unraisablehook
  sys.unraisablehook = without_closed_loop_noise(previous)
  try:
    with settled_event_loops(), _absl_warnings_off():
      yield
  except BaseException:
    gc.collect()  # Finalise the failed operations while the filter is on.
    raise
  else:
    if collect:
      gc.collect()
  finally:
    sys.unraisablehook = previous


# orbax's checkpoint managers share process-wide machinery (operation ids,
# signalling threads, an event loop) that is not safe to drive from two
# threads at once, and `_quiet_failed_io` swaps the process's unraisable
# hook: runs trained side by side in threads (`experiments/_common.py`)
# take turns for every orbax operation, and a save is finished before the
# turn ends.
_ORBAX_TURN = threading.RLock()


def _in_turn(method):
  """Runs a `Checkpointer` method while holding `_ORBAX_TURN`."""

  @functools.wraps(method)
  def wrapped(*args, **kwargs):
    with _ORBAX_TURN:
      return method(*args, **kwargs)

  return wrapped


@dataclasses.dataclass(frozen=True)
class Restored:
  """A checkpoint that was read back: its step, arrays and JSON metadata."""

  step: int
  state: Any
  meta: dict[str, Any]


class Checkpointer:
  """orbax checkpoints of `<workdir>/checkpoints` (see the module docstring).

  Args:
    workdir: the run's directory.
    max_to_keep: how many checkpoints to keep.
    read_only: only read (no directory is created, nothing is moved).
  """

  def __init__(
    self,
    workdir: str | os.PathLike,
    max_to_keep: int = 2,
    *,
    read_only: bool = False,
  ):
    self.workdir = pathlib.Path(workdir).absolute()
    self.directory = self.workdir / "checkpoints"
    self._failed = False  # an operation failed: collect on every exit
    if parallel.is_primary() and not read_only:
      ensure_directory(self.workdir)
    options = ocp.CheckpointManagerOptions(
      # What orbax sets (and logs that it sets) for a read-only manager.
      max_to_keep=None if read_only else max_to_keep,
      save_interval_steps=0 if read_only else 1,
      create=not read_only,
      read_only=read_only,
      cleanup_tmp_directories=not read_only,
    )
    try:
      with _ORBAX_TURN, _absl_warnings_off():
        self._manager = ocp.CheckpointManager(self.directory, options=options)
    except OSError as error:
      raise CheckpointWriteError(
        error.errno,
        f"cannot use {self.directory} for checkpoints: {_reason(error)}",
      ) from error

  def latest_step(self) -> int | None:
    """The newest checkpoint's step (intact or not), None if there is none."""
    return self._manager.latest_step()

  @_in_turn
  def restore_latest(
    self,
    target: Any = None,
    *,
    check_meta: Callable[[dict[str, Any]], None] | None = None,
    set_aside: bool = True,
  ) -> Restored | None:
    """The newest checkpoint that restores, or None (see the module doc).

    Args:
      target: the state's structure (`jax.ShapeDtypeStruct` leaves with
        their shardings), or None to restore the arrays as saved.
      check_meta: called with the metadata of the newest readable
        checkpoint before its arrays are read; what it raises (e.g. "this
        workdir holds another run") propagates and is not taken for damage.
      set_aside: move damaged checkpoints to `damaged_checkpoints/` (False:
        leave the workdir as it is, e.g. for reading only).

    Returns:
      The restored checkpoint, or None when there is none intact (the run
      starts over; a log line says so).
    """
    damaged, restored = [], None
    for step in sorted(self._manager.all_steps(), reverse=True):
      try:
        with self._quiet():
          meta = self._restore_meta(step)
      except Exception as error:  # noqa: BLE001 (any failure: try older)
        damaged.append((step, _reason(error)))
        continue
      if check_meta is not None:
        check_meta(meta)
      try:
        with self._quiet():
          state = self._manager.restore(
            step,
            args=ocp.args.Composite(state=ocp.args.StandardRestore(target)),
          ).state
      except Exception as error:  # noqa: BLE001
        damaged.append((step, _reason(error)))
        continue
      restored = Restored(step=step, state=state, meta=meta)
      break
    if damaged:
      aside = self._set_aside([s for s, _ in damaged]) if set_aside else None
      self._report(damaged, restored, aside, set_aside)
    return restored

  def _report(self, damaged, restored, aside, set_aside) -> None:
    """One warning line: the damaged steps, why, and what is used instead."""
    steps = ", ".join(str(s) for s, _ in damaged)
    head = f"Checkpoint{'s' if len(damaged) > 1 else ''} at step"
    head += f"{'s' if len(damaged) > 1 else ''} {steps}"
    reasons = "; ".join(
      reason if len(damaged) == 1 else f"{s}: {reason}" for s, reason in damaged
    )
    moved = f", moved to {aside}" if aside else ""
    if restored is not None:
      outcome = f"using step {restored.step} instead"
    elif set_aside:
      outcome = "no intact checkpoint is left: starting over from step 0"
    else:
      outcome = "no intact checkpoint is left: none can be read"
    logging.warning(
      "%s in %s cannot be restored (%s)%s; %s.",
      head,
      self.directory,
      reasons,
      moved,
      outcome,
    )

  @_in_turn
  def restore(self, step: int, target: Any = None) -> Restored:
    """The checkpoint at `step`; raises what orbax raises if it is damaged."""
    with self._quiet():
      meta = self._restore_meta(step)
      state = self._manager.restore(
        step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target))
      ).state
    return Restored(step=step, state=state, meta=meta)

  def _restore_meta(self, step: int) -> dict[str, Any]:
    meta = self._manager.restore(
      step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())
    ).meta
    if not isinstance(meta, dict):
      raise ValueError(f"its metadata is not a JSON object: {meta!r}")
    return meta

  def _set_aside(self, steps: list[int]) -> pathlib.Path:
    """Moves damaged step folders out of orbax's sight, keeping them.

    Returns:
      The directory they are moved to, `<workdir>/damaged_checkpoints`
      (each as `<step>-<time stamp>`).
    """
    aside = self.workdir / "damaged_checkpoints"
    if parallel.is_primary():
      aside.mkdir(exist_ok=True)
      stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
      for step in steps:
        shutil.move(str(self.directory / str(step)), aside / f"{step}-{stamp}")
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils  # noqa: PLC0415

      multihost_utils.sync_global_devices("equivlab_damaged_checkpoints")
    self._manager.reload()
    return aside

  @_in_turn
  def save(self, step: int, state: Any, meta: dict[str, Any]) -> None:
    """Writes a checkpoint; returns once it is on disk.

    Raises:
      CheckpointWriteError: if the save failed (nothing of it is left).
    """
    self.wait()  # an earlier save's failure is that save's failure
    with self._write_errors(step):
      self._manager.save(
        step,
        args=ocp.args.Composite(
          state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)
        ),
      )
      self._manager.wait_until_finished()

  @_in_turn
  def wait(self) -> None:
    """Waits for pending saves; raises `CheckpointWriteError` on failure."""
    with self._write_errors(self._manager.latest_step()):
      self._manager.wait_until_finished()

  @contextlib.contextmanager
  def _write_errors(self, step: int | None):
    try:
      with (
        self._quiet(),
        write_errors(
          f"the checkpoint of step {step} to {self.directory}",
          kinds=(Exception,),
          advice=_ADVICE,
        ),
      ):
        yield
    except CheckpointWriteError:
      self._remove_temporaries()
      raise

  def _remove_temporaries(self) -> None:
    if not self.directory.is_dir():
      return
    for path in self.directory.iterdir():
      if _TMP_MARKER in path.name:
        shutil.rmtree(path, ignore_errors=True)

  @_in_turn
  def close(self) -> None:
    """Waits for pending saves and stops orbax's threads; never raises."""
    with contextlib.suppress(Exception), self._quiet():
      try:
        self._manager.wait_until_finished()
      except Exception:  # noqa: BLE001 (reported by save / wait already)
        self._failed = True
        self._remove_temporaries()
      with contextlib.suppress(Exception):
        self._manager.close()
      if self._failed:
        gc.collect()
    self._remove_temporaries()

  @contextlib.contextmanager
  def _quiet(self):
    """`_quiet_failed_io`, collecting on every exit after a failure."""
    with _quiet_failed_io(collect=self._failed):
      try:
        yield
      except BaseException:
        self._failed = True
        raise

  def __enter__(self) -> Checkpointer:
    return self

  def __exit__(self, *exc_info) -> None:
    self.close()
