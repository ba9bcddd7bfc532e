r"""Everything worth measuring on an accelerator, in one command.

  python -m benchmarks.accelerator_suite --output=suite.json   # a GPU/TPU
  python -m benchmarks.accelerator_suite --tiny                # CPU, for CI

In order, each part under its own time limit, one JSON at the end:
  device       the backend and devices jax sees;
  exactness    p4 equivariance of `lifting_conv`, `group_conv` and an
               untrained P4CNN, and `rnn.elman_bptt` against `jax.grad`, in
               float32 at the default matmul precision (TF32 on NVIDIA
               GPUs) and at "highest": whether each holds its tolerance;
  gconv, rnn, data_pipeline, dqn   the benchmarks of `benchmarks/` (DQN at
               1, 64 and 1024 vmapped seeds);
  main_job     `experiments.rotated_digits` with its defaults, timed;
  tests        the equivariance and gradient test files under pytest, on
               the accelerator (tests/conftest.py sets "highest" precision).

The default sizes are meant for a single GPU; `--tiny` shrinks every part
so that the suite runs on a CPU (the test
`tests/accelerator_suite_test.py` keeps it working). A failing part is
recorded (exit code, the end of its output) and the suite goes on.
"""

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

_ROOT = pathlib.Path(__file__).resolve().parents[1]
# Tolerances of the float32 tests (tests/rnn_test.py, equivlab.testing).
EQUIVARIANCE_RTOL = 1e-4
BPTT_RTOL = 1e-5

TEST_FILES = (
  "tests/gconv_test.py",
  "tests/layers_test.py",
  "tests/testing_test.py",
  "tests/rnn_test.py",
  "tests/derivations_test.py",
  "tests/gradcheck_test.py",
)


def _sizes(tiny: bool) -> dict:
  """Command-line settings of every part, full or tiny."""
  if tiny:
    return {
      "gconv": ["--repeats=2", "--batch=8", "--channels=4", "--no-export"],
      "rnn": ["--repeats=2", "--long_t=20", "--python_long_t=20"],
      "data_pipeline": ["--steps=5", "--batch_size=32"],
      "dqn": ["--total_env_steps=1000", "--seed_counts=2", "--repeats=1"],
      "main_job": [
        "--models=p4cnn",
        "--num_epochs=1",
        "--train_limit=128",
        "--test_limit=64",
        "--num_seeds=1",
        "--num_invariance=8",
      ],
      "tests": ["-k", "test_control_plain_conv_is_not_rotation_equivariant"],
    }
  return {
    "gconv": ["--repeats=10"],
    "rnn": ["--repeats=10"],
    "data_pipeline": ["--steps=100"],
    "dqn": [
      "--total_env_steps=20000",
      "--seed_counts=1,64,1024",
      "--repeats=1",
    ],
    "main_job": [],
    "tests": [],
  }


def device_info() -> dict:
  import jax  # noqa: PLC0415 (the parent imports jax only here)

  devices = jax.devices()
  return {
    "backend": jax.default_backend(),
    "device_kind": devices[0].device_kind,
    "devices": [str(d) for d in devices],
    "jax": jax.__version__,
  }


def exactness(tiny: bool) -> dict:
  """Equivariance and BPTT errors at the default and the highest precision.

  The equivariance errors are measured directly (not through
  `equivlab.testing`, which always evaluates at "highest").
  """
  import jax  # noqa: PLC0415
  import jax.numpy as jnp  # noqa: PLC0415
  import numpy as np  # noqa: PLC0415

  from equivlab import gconv, rnn  # noqa: PLC0415
  from equivlab.nn import models  # noqa: PLC0415

  rng = np.random.default_rng(0)
  n, size, c = (2, 9, 4) if tiny else (16, 28, 16)
  x = jnp.asarray(rng.standard_normal((n, size, size, c)), jnp.float32)
  f = jnp.asarray(rng.standard_normal((n, size, size, c, 4)), jnp.float32)
  w_lift = jnp.asarray(rng.standard_normal((3, 3, c, c)), jnp.float32)
  w_group = jnp.asarray(rng.standard_normal((3, 3, c, 4, c)), jnp.float32)
  digits = jnp.asarray(rng.random((n, 28, 28, 1)), jnp.float32)
  p4cnn = models.get_model("p4cnn")
  variables = p4cnn.init(jax.random.key(0), digits)

  def rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))

  def errors():
    lift = jax.jit(lambda x: gconv.lifting_conv(x, w_lift))
    group = jax.jit(lambda f: gconv.group_conv(f, w_group))
    net = jax.jit(lambda x: p4cnn.apply(variables, x))
    return {
      "lifting_conv": max(
        rel(lift(gconv.rotate_z2(x, k)), gconv.rotate_p4(lift(x), k))
        for k in (1, 2, 3)
      ),
      "group_conv": max(
        rel(group(gconv.rotate_p4(f, k)), gconv.rotate_p4(group(f), k))
        for k in (1, 2, 3)
      ),
      "p4cnn_logits": max(
        rel(net(gconv.rotate_z2(digits, k)), net(digits)) for k in (1, 2, 3)
      ),
      "elman_bptt_vs_grad": _bptt_error(rnn, rng, tiny),
    }

  out = {}
  for precision in ("default", "highest"):
    with jax.default_matmul_precision(precision):
      got = errors()
    holds = {
      name: value
      <= (BPTT_RTOL if name == "elman_bptt_vs_grad" else EQUIVARIANCE_RTOL)
      for name, value in got.items()
    }
    out[precision] = {"errors": got, "within_tolerance": holds}
  out["default_precision_suffices"] = all(
    out["default"]["within_tolerance"].values()
  )
  return out


def _bptt_error(rnn, rng, tiny: bool) -> float:
  import jax  # noqa: PLC0415
  import jax.numpy as jnp  # noqa: PLC0415
  import numpy as np  # noqa: PLC0415

  t, d, h, k = (5, 3, 4, 3) if tiny else (50, 16, 64, 10)
  params = {
    "W_xh": rng.standard_normal((h, d)) / np.sqrt(d),
    "W_hh": rng.standard_normal((h, h)) / np.sqrt(h),
    "b_h": np.zeros(h),
    "W_hz": rng.standard_normal((k, h)) / np.sqrt(h),
    "b_z": np.zeros(k),
  }
  params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), params)
  xs = jnp.asarray(rng.standard_normal((t, d)), jnp.float32)
  ys = jnp.asarray(rng.integers(0, k, t), jnp.int32)
  h0 = jnp.zeros(h, jnp.float32)
  _, grads = jax.jit(rnn.elman_bptt)(params, xs, ys, h0)
  ref = jax.jit(jax.grad(rnn.elman_loss))(params, xs, ys, h0)
  return max(
    float(
      np.max(np.abs(np.asarray(grads[name]) - np.asarray(ref[name])))
      / np.max(np.abs(np.asarray(ref[name])))
    )
    for name in ref
  )


def run_part(name, command, timeout_s, json_path=None) -> dict:
  """Runs one part as a subprocess; its exit code, time and results."""
  start = time.perf_counter()
  try:
    out = subprocess.run(
      command,
      cwd=_ROOT,
      capture_output=True,
      text=True,
      timeout=timeout_s,
      check=False,
    )
    rc, text = out.returncode, out.stdout + out.stderr
  except subprocess.TimeoutExpired as e:
    rc = "timeout"
    text = (e.stdout or b"").decode(errors="replace") if e.stdout else ""
  record = {
    "command": " ".join(command[1:]),
    "returncode": rc,
    "seconds": round(time.perf_counter() - start, 2),
    "output_tail": text[-3000:],
  }
  if json_path and pathlib.Path(json_path).is_file():
    record["results"] = json.loads(pathlib.Path(json_path).read_text())
  print(f"[{name}] exit {rc} in {record['seconds']:.1f} s", flush=True)
  return record


def _commands(tiny: bool, scratch: pathlib.Path) -> dict:
  sizes, py = _sizes(tiny), sys.executable
  return {
    "gconv": (
      [py, "-m", "benchmarks.gconv", f"--json={scratch / 'gconv.json'}"]
      + sizes["gconv"],
      scratch / "gconv.json",
    ),
    "rnn": (
      [py, "-m", "benchmarks.rnn", f"--json={scratch / 'rnn.json'}"]
      + sizes["rnn"],
      scratch / "rnn.json",
    ),
    "data_pipeline": (
      [py, "-m", "benchmarks.data_pipeline"] + sizes["data_pipeline"],
      None,
    ),
    "dqn": (
      [py, "-m", "benchmarks.dqn", f"--output={scratch / 'dqn.json'}"]
      + sizes["dqn"],
      scratch / "dqn.json",
    ),
    "main_job": (
      [
        py,
        "-m",
        "experiments.rotated_digits",
        f"--workdir={scratch / 'rotated_digits'}",
      ]
      + sizes["main_job"],
      scratch / "rotated_digits" / "results.json",
    ),
    "tests": (
      [py, "-m", "pytest", "-q", "-p", "no:cacheprovider", *TEST_FILES]
      + sizes["tests"],
      None,
    ),
  }


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--tiny", action="store_true", help="CPU-sized parts.")
  parser.add_argument("--output", default="accelerator_suite.json")
  parser.add_argument(
    "--part_timeout_s", type=float, default=240.0, help="Limit per part."
  )
  parser.add_argument(
    "--parts", nargs="+", default=None, help="Only these parts (names)."
  )
  args = parser.parse_args(argv)
  start = time.perf_counter()
  suite = {"device": device_info(), "tiny": args.tiny, "parts": {}}
  print(f"device: {suite['device']}", flush=True)
  wanted = set(args.parts or ["exactness", *_commands(True, _ROOT)])
  if "exactness" in wanted:
    suite["exactness"] = exactness(args.tiny)
    print(f"exactness: {json.dumps(suite['exactness'])}", flush=True)
  with tempfile.TemporaryDirectory(prefix="equivlab-suite-") as scratch:
    for name, (command, json_path) in _commands(
      args.tiny, pathlib.Path(scratch)
    ).items():
      if name in wanted:
        suite["parts"][name] = run_part(
          name, command, args.part_timeout_s, json_path
        )
  suite["total_seconds"] = round(time.perf_counter() - start, 1)
  pathlib.Path(args.output).write_text(json.dumps(suite, indent=2))
  print(f"wrote {args.output} ({suite['total_seconds']} s)", flush=True)
  return suite


if __name__ == "__main__":
  os.environ.setdefault("PYTHONUNBUFFERED", "1")
  main()
