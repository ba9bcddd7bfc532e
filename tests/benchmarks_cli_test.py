"""Every benchmark script parses its command line: `--help` prints the
options and exits without running anything or writing a file."""

import os
import pathlib
import subprocess
import sys

import pytest

_ROOT = pathlib.Path(__file__).resolve().parents[1]
_BENCHMARKS = sorted(
  path.stem
  for path in (_ROOT / "benchmarks").glob("*.py")
  if 'if __name__ == "__main__":' in path.read_text(encoding="utf-8")
)


def test_the_benchmark_scripts_are_found():
  assert "adam_adagrad" in _BENCHMARKS
  assert "gconv" in _BENCHMARKS
  assert len(_BENCHMARKS) >= 10


@pytest.mark.parametrize("name", _BENCHMARKS)
def test_help_prints_the_options_and_runs_nothing(name, tmp_path):
  env = dict(os.environ, PYTHONPATH=str(_ROOT), JAX_PLATFORMS="cpu")
  proc = subprocess.run(
    [sys.executable, "-m", f"benchmarks.{name}", "--help"],
    cwd=tmp_path,  # Anything the script wrote would land here.
    env=env,
    capture_output=True,
    text=True,
    timeout=120,
    check=False,
  )
  out = proc.stdout + proc.stderr
  # absl's app.run prints the flags for --help and exits with status 1.
  absl_help = "--helpfull" in out
  assert proc.returncode == 0 or (absl_help and proc.returncode == 1), out
  assert "usage" in out.lower() or "flags" in out.lower(), out
  assert "--" in out, out  # At least one option is described.
  assert list(tmp_path.iterdir()) == [], "--help wrote files"
