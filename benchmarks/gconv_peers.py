r"""equivlab's p4/p4m convolutions against escnn's, layer for layer.

Each measurement runs in a process of its own, pinned to the first 1 or 2
CPU cores (PyTorch also gets that many threads), so that the two sides
neither share a core nor a heap and each process's peak resident memory is
its own; the sides alternate, round after round, and each keeps its best
round. The layer: regular fields of C4 (p4) or D4 (p4m), 3x3 kernels,
"SAME"-size output, a bias per field, batch 128 of 28x28, float32, one
forward and backward pass (gradients of the input, filters and bias) of the
mean squared output. escnn runs in train mode (`R2Conv` expands its filter
basis on every call, as when training). equivlab's sides (`--variants`):

  default  as the library compiles: `xla_options.jit`, one XLA convolution
           per call with YNNPACK's convolutions off;
  cpu      the convolutions' CPU path, same compiler options;
  jaxlib   the CPU path under a plain `jax.jit` (jaxlib's default options,
           YNNPACK convolutions on): what code that calls `jax.jit`
           itself gets.

  python -m benchmarks.gconv_peers --peer_python=/path/to/venv/bin/python

escnn installs with `pip install --no-deps escnn lie-learn pymanopt
autograd` plus torch, scipy, joblib and requests, and needs numpy < 2:
give it a venv of its own and pass that venv's interpreter. Prints a table
and writes `--json`.
"""

import argparse
import json
import os
import pathlib
import resource
import statistics
import subprocess
import sys
import time

# (group, layer kind, fields): 128 channels at p4 (32 x 4) and p4m (16 x 8).
LAYERS = (
  ("p4", "lifting", 32),
  ("p4", "group", 32),
  ("p4m", "lifting", 16),
  ("p4m", "group", 16),
)
_ROOT = pathlib.Path(__file__).resolve().parents[1]


def jax_side(group, layer, fields, batch, size, repeats, variant) -> dict:
  """Times equivlab's layer in this process; the worker's measurement."""
  import jax  # noqa: PLC0415 (the parent process never imports jax)
  import jax.numpy as jnp  # noqa: PLC0415
  import numpy as np  # noqa: PLC0415

  from equivlab import gconv  # noqa: PLC0415
  from equivlab.nn import normalization  # noqa: PLC0415
  from equivlab.ops import xla_options  # noqa: PLC0415

  order = 4 if group == "p4" else 8
  conv = {
    ("p4", "lifting"): gconv.lifting_conv,
    ("p4", "group"): gconv.group_conv,
    ("p4m", "lifting"): gconv.lifting_conv_p4m,
    ("p4m", "group"): gconv.group_conv_p4m,
  }[group, layer]
  rng = np.random.default_rng(0)
  if layer == "lifting":
    x_shape, w_shape = (batch, size, size, 1), (3, 3, 1, fields)
  else:
    x_shape = (batch, size, size, fields, order)
    w_shape = (3, 3, fields, order, fields)
  x = jnp.asarray(rng.standard_normal(x_shape), jnp.float32)
  w = jnp.asarray(rng.standard_normal(w_shape), jnp.float32)
  b = jnp.zeros((fields,), jnp.float32)

  impl = "auto" if variant == "default" else "cpu"

  def loss(x, w, b):  # the bias as `layers.GroupConv` adds it
    out = normalization.channel_affine(conv(x, w, impl=impl), bias=b)
    return jnp.mean(jnp.square(out))

  grads = jax.value_and_grad(loss, argnums=(0, 1, 2))
  jit = jax.jit if variant == "jaxlib" else xla_options.jit
  step = jit(grads)
  jax.block_until_ready(step(x, w, b))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(step(x, w, b))
    times.append(time.perf_counter() - start)
  return {
    "side": f"equivlab/{variant}",
    "jax": jax.__version__,
    "min_s": min(times),
    "median_s": statistics.median(times),
    "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
  }


def _pinned(threads):
  cores = sorted(os.sched_getaffinity(0))[:threads]
  return lambda: os.sched_setaffinity(0, cores)


def _measure(command, threads) -> dict:
  env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
  out = subprocess.run(
    command,
    capture_output=True,
    text=True,
    cwd=_ROOT,
    env=env,
    preexec_fn=_pinned(threads),
    check=False,
  )
  lines = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
  if out.returncode or not lines:
    raise RuntimeError(
      f"{command[0]} ... failed ({out.returncode}): {out.stderr[-2000:]}"
    )
  return json.loads(lines[-1])


def _commands(args, layer_spec, threads):
  group, layer, fields = layer_spec
  common = [
    f"--layer={layer}",
    f"--group={group}",
    f"--fields={fields}",
    f"--batch={args.batch}",
    f"--size={args.size}",
    f"--repeats={args.repeats}",
  ]
  ours = [sys.executable, "-m", "benchmarks.gconv_peers", "--worker"]
  sides = {v: [*ours, f"--variant={v}", *common] for v in args.variants}
  if args.peer_python:
    sides["escnn"] = [
      args.peer_python,
      str(_ROOT / "benchmarks" / "escnn_side.py"),
      f"--threads={threads}",
      *common,
    ]
  return sides


def run(args) -> dict:
  """Every layer at every thread count: best round per side, ratios."""
  results = {}
  for threads in args.threads:
    for spec in LAYERS:
      sides = _commands(args, spec, threads)
      best = {}
      for _ in range(args.rounds):  # the sides alternate
        for side, command in sides.items():
          got = _measure(command, threads)
          if side not in best or got["min_s"] < best[side]["min_s"]:
            best[side] = {
              **got,
              "peak_rss_mib": max(
                got["peak_rss_mib"], best.get(side, got)["peak_rss_mib"]
              ),
            }
      name = f"{spec[0]} {spec[1]} ({spec[2]} fields), {threads} thread(s)"
      results[name] = {"sides": best, "ratios": _ratios(best)}
      _print_row(name, best)
  return results


def _ratios(best) -> dict:
  ratios = {}
  if "escnn" in best:
    for side in best:
      if side != "escnn":
        ratios[f"{side} / escnn time"] = (
          best[side]["min_s"] / best["escnn"]["min_s"]
        )
        ratios[f"{side} / escnn peak memory"] = (
          best[side]["peak_rss_mib"] / best["escnn"]["peak_rss_mib"]
        )
  if "default" in best:
    for side in ("cpu", "jaxlib"):
      if side in best:
        ratios[f"{side} / default time"] = (
          best[side]["min_s"] / best["default"]["min_s"]
        )
  return ratios


def _print_row(name, best) -> None:
  cells = ", ".join(
    f"{side} {1e3 * v['min_s']:.0f} ms ({v['peak_rss_mib']:.0f} MiB)"
    for side, v in best.items()
  )
  print(f"{name}: {cells}", flush=True)
  for key, value in _ratios(best).items():
    print(f"  {key}: {value:.2f}", flush=True)


def _parse(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument(
    "--peer_python",
    default=None,
    help="Interpreter of a venv with escnn (none: skip).",
  )
  parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument(
    "--repeats",
    type=int,
    default=3,
    help="Timed calls per process (after a warm-up).",
  )
  parser.add_argument("--batch", type=int, default=128)
  parser.add_argument("--size", type=int, default=28)
  parser.add_argument(
    "--variants",
    nargs="+",
    default=["default", "jaxlib"],
    choices=["default", "cpu", "jaxlib"],
  )
  parser.add_argument("--json", default=None)
  # The worker (one side, one layer), started by `run`.
  parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
  parser.add_argument("--layer", choices=["lifting", "group"])
  parser.add_argument("--group", choices=["p4", "p4m"])
  parser.add_argument("--fields", type=int)
  parser.add_argument("--variant", choices=["default", "cpu", "jaxlib"])
  return parser.parse_args(argv)


def main(argv=None) -> None:
  args = _parse(argv)
  if args.worker:
    print(
      json.dumps(
        jax_side(
          args.group,
          args.layer,
          args.fields,
          args.batch,
          args.size,
          args.repeats,
          args.variant,
        )
      )
    )
    return
  results = {
    "settings": {
      k: v
      for k, v in vars(args).items()
      if k in ("threads", "rounds", "repeats", "batch", "size", "variants")
    },
    "cpu_count": os.cpu_count(),
    "layers": run(args),
  }
  if args.json:
    pathlib.Path(args.json).write_text(json.dumps(results, indent=2))
    print(f"wrote {args.json}")


if __name__ == "__main__":
  main()
