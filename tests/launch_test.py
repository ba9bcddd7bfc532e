"""Tests of experiments/_launch.py, the experiments' shared entry point."""

import logging

from experiments import _launch


def _record(path: str, level: int) -> logging.LogRecord:
  return logging.LogRecord("absl", level, path, 1, "message", None, None)


def test_orbax_info_is_dropped_but_warnings_and_our_logs_pass():
  handler = logging.Handler()
  _launch.quiet_library_logs(handler)
  _launch.quiet_library_logs(handler)  # idempotent: one filter, not two.
  assert len(handler.filters) == 1
  orbax = "/venv/lib/python3.11/site-packages/orbax/checkpoint/manager.py"
  ours = "/repo/equivlab/train.py"
  assert not handler.filter(_record(orbax, logging.INFO))
  assert handler.filter(_record(orbax, logging.WARNING))
  assert handler.filter(_record(ours, logging.INFO))
