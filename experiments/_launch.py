"""The shared entry point of the experiments.

Each experiment registers its flags in `define_flags(flag_values)` and reads
them in `main(argv, holders)`; `run(main, define_flags)` registers the flags
only when the module runs as a script (so that tests can import every
experiment into one process) and keeps orbax's per-checkpoint INFO records
(hundreds a run) out of the console, leaving its warnings and our own logs.
"""

import logging as std_logging
from collections.abc import Callable, Sequence
from typing import Any

from absl import app, logging

_QUIET_PACKAGES = ("orbax",)


class _BelowWarningFrom(std_logging.Filter):
  """Drops records below WARNING that were logged from one package's files."""

  def __init__(self, package: str):
    super().__init__()
    self._fragment = f"/{package}/"

  def filter(self, record: std_logging.LogRecord) -> bool:
    return (
      record.levelno >= std_logging.WARNING
      or self._fragment not in record.pathname.replace("\\", "/")
    )


def quiet_library_logs(
  handler: std_logging.Handler | None = None,
  packages: Sequence[str] = _QUIET_PACKAGES,
) -> None:
  """Filters INFO and DEBUG records of `packages` out of a log handler.

  Args:
    handler: the handler to filter; absl's handler if None.
    packages: top-level package names whose chatter to drop.
  """
  handler = handler or logging.get_absl_handler()
  present = {type(f) for f in handler.filters}
  if _BelowWarningFrom in present:
    return
  for package in packages:
    handler.addFilter(_BelowWarningFrom(package))


def run(
  main: Callable[[Sequence[str], Any], None],
  define_flags: Callable[[], Any],
) -> None:
  """Registers the experiment's flags and runs `main(argv, holders)`."""
  holders = define_flags()

  def _main(argv: Sequence[str]) -> None:
    quiet_library_logs()
    main(argv, holders)

  app.run(_main)
