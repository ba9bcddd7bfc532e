r"""Data-parallel scaling: steps/s and images/s for 1, 2, 4, 8 devices.

Times the training loop's own jitted step (`equivlab.train.prepare`) on
a mesh of each device count from `equivlab.parallel`, with the batch
sharded over the "data" axis and the state replicated, and prints a table
of steps per second, images per second, and the speedup and efficiency
against one device, all measured in this one run.

Strong scaling by default (the global batch stays `--batch_size`, so each
device gets `batch_size / n`); `--weak` keeps `--batch_size` per device.
Each timed step includes `shard_batch` from host memory, as in the loop.

On a CPU-only machine the devices are simulated
(`--xla_force_host_platform_device_count`, set here before jax starts):
they share the same cores, so the table measures the cost of splitting
and all-reducing, not a speedup. On a multi-GPU host the same command
times the real GPUs (the CPU flag does not touch them); on a TPU pod
slice run it on every worker with `--auto_distributed`.

  python -m benchmarks.scaling                      # 1, 2, 4, 8 devices
  python -m benchmarks.scaling --devices=1,2 --model=p4cnn --batch_size=64
"""

import argparse
import json
import os
import sys
import time

_CPU_DEVICES = 8


def _parse(argv):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument(
    "--devices",
    default="1,2,4,8",
    help="Comma-separated device counts to time.",
  )
  parser.add_argument(
    "--model", default="cnn", help="equivlab.nn.models name (cnn, p4cnn, ...)."
  )
  parser.add_argument(
    "--model_kwargs",
    default='{"norm": "batch"}',
    help="Model keyword arguments as a JSON object.",
  )
  parser.add_argument(
    "--batch_size",
    type=int,
    default=256,
    help="Global batch (strong scaling) or per-device batch (--weak).",
  )
  parser.add_argument(
    "--weak", action="store_true", help="Keep the per-device batch fixed."
  )
  parser.add_argument(
    "--steps", type=int, default=20, help="Timed steps per repeat."
  )
  parser.add_argument(
    "--repeats", type=int, default=3, help="Repeats; the best one counts."
  )
  parser.add_argument(
    "--auto_distributed",
    action="store_true",
    help="Join a multi-host run detected by jax (TPU pod slice, Slurm).",
  )
  parser.add_argument(
    "--output", default=None, help="Also write the rows to this JSON file."
  )
  return parser.parse_args(argv)


def time_device_count(num_devices, config, images, labels, steps, repeats):
  """Best-of-`repeats` time of `steps` train steps on `num_devices` devices.

  Args:
    num_devices: mesh size.
    config: an `equivlab.train.TrainConfig` (its batch_size is the global
      batch).
    images: `[M, H, W, C]` host images, M >= this process's batch part.
    labels: `[M]` labels.
    steps: timed steps per repeat (after one compiling step).
    repeats: number of repeats.

  Returns:
    A dict with the device count, global batch, steps/s, images/s and the
    compile time of the first step.
  """
  import jax  # noqa: PLC0415

  from equivlab import parallel, train  # noqa: PLC0415

  mesh = parallel.make_mesh(num_devices)
  local = parallel.local_batch_size(config.batch_size, mesh)
  batch = {"image": images[:local], "label": labels[:local]}
  state, run_steps = train.prepare(config, images[:2])
  state = parallel.replicate(state, mesh)
  start = time.perf_counter()
  state, metrics = run_steps.train_step(
    state, parallel.shard_batch(batch, mesh)
  )
  jax.block_until_ready(metrics)
  compile_s = time.perf_counter() - start
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    for _ in range(steps):
      state, metrics = run_steps.train_step(
        state, parallel.shard_batch(batch, mesh)
      )
    jax.block_until_ready((state.params, metrics))
    best = min(best, time.perf_counter() - start)
  steps_per_s = steps / best
  return {
    "devices": num_devices,
    "global_batch": config.batch_size,
    "steps_per_s": steps_per_s,
    "images_per_s": steps_per_s * config.batch_size,
    "first_step_s": compile_s,
  }


def run(args):
  """Times every device count in `args.devices`; returns the table rows."""
  import jax  # noqa: PLC0415

  from equivlab import data, parallel, train  # noqa: PLC0415

  if args.auto_distributed:
    parallel.initialize_distributed(None, None, None, timeout_s=300)
  counts = [int(c) for c in args.devices.split(",") if c.strip()]
  available = jax.device_count()
  if any(c < 1 or c > available for c in counts):
    raise ValueError(
      f"--devices must be in 1..{available} (the devices available on "
      f"{jax.default_backend()}), got {counts}."
    )
  kwargs = json.loads(args.model_kwargs)
  images, labels = data.embedded_digits("train")
  rows = []
  for n in counts:
    global_batch = args.batch_size * n if args.weak else args.batch_size
    if global_batch > len(labels):
      reps = -(-global_batch // len(labels))
      images, labels = images.repeat(reps, 0), labels.repeat(reps, 0)
    config = train.TrainConfig(
      model=args.model,
      model_kwargs=tuple(
        (k, tuple(v) if isinstance(v, list) else v) for k, v in kwargs.items()
      ),
      batch_size=global_batch,
      optimizer="momentum",
      learning_rate=0.01,
      num_devices=n,
    )
    row = time_device_count(n, config, images, labels, args.steps, args.repeats)
    rows.append(row)
    if parallel.is_primary():
      print(
        f"  {n} device(s): {row['steps_per_s']:.2f} steps/s, "
        f"{row['images_per_s']:.0f} images/s",
        file=sys.stderr,
        flush=True,
      )
  base = rows[0]
  for row in rows:
    row["speedup"] = row["images_per_s"] / base["images_per_s"]
    row["efficiency"] = row["speedup"] / (row["devices"] / base["devices"])
  return rows


def format_rows(rows, header):
  """The rows as a markdown table under a one-line header."""
  from equivlab.analysis import tables  # noqa: PLC0415

  table = tables.format_table(
    [
      {
        "devices": r["devices"],
        "global batch": r["global_batch"],
        "steps/s": f"{r['steps_per_s']:.2f}",
        "images/s": f"{r['images_per_s']:.0f}",
        "speedup": f"{r['speedup']:.2f}x",
        "efficiency": f"{r['efficiency']:.0%}",
        "first step (s)": f"{r['first_step_s']:.1f}",
      }
      for r in rows
    ]
  )
  return f"{header}\n\n{table}"


def main(argv=None):
  args = _parse(argv)
  flag = f"--xla_force_host_platform_device_count={_CPU_DEVICES}"
  if "xla_force_host_platform_device_count" not in os.environ.get(
    "XLA_FLAGS", ""
  ):
    # Only the host CPU platform reads this; GPUs and TPUs are unaffected.
    os.environ["XLA_FLAGS"] = (
      os.environ.get("XLA_FLAGS", "") + " " + flag
    ).strip()
  import jax  # noqa: PLC0415 (after XLA_FLAGS)

  from equivlab import parallel  # noqa: PLC0415

  rows = run(args)
  if not parallel.is_primary():
    return rows
  devices = jax.devices()
  header = (
    f"{args.model} data-parallel {'weak' if args.weak else 'strong'} "
    f"scaling on {jax.default_backend()} ({devices[0].device_kind}, "
    f"{len(devices)} devices, {jax.process_count()} process(es), "
    f"{os.cpu_count()} host cores); best of {args.repeats} x {args.steps} "
    "steps"
  )
  print(format_rows(rows, header))
  if args.output:
    with open(args.output, "w") as f:
      json.dump({"header": header, "rows": rows}, f, indent=2)
  return rows


if __name__ == "__main__":
  main()
