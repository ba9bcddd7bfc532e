r"""Cost of a training step against the mini-batch size M.

Counting the operations of backpropagation (Goodfellow, Bengio & Courville,
"Deep Learning" (2016) section 6.5) by hand gives, for an MLP with L
hidden layers of width d_H on inputs of size d with K classes, the
backward-pass compute

  M [(L - 1)(3 d_H^2 + d_H) + d_H (2 d_H + d + 3K + 1) + 2K]

and memory `(L - 1)(d_H^2 + d_H) + d_H (d + K) + K + 2 M d_H` numbers,
both linear in M. This benchmark times the training engine's own jitted
SGD step (`equivlab.train.prepare`: forward, backward and update) for M =
1, 2, 4, ..., 1024 on a fixed "mlp" from `equivlab.nn.models`, and reads three
figures from XLA for the compiled step of each M:

- seconds per step (median of `--repeats` runs of `--steps` steps);
- FLOPs, from `compiled.cost_analysis()["flops"]`;
- memory, from `compiled.memory_analysis()`: `temp_size_in_bytes` (the
  buffers live inside the step: activations kept for the backward pass,
  gradients, workspace) and the total `argument + output + temp - alias`
  bytes. These are the COMPILED PROGRAM'S static allocation figures, not
  the process's peak RSS.

It fits `y = a + b M` by least squares to each figure (over M >= 64 for
the time, where the fixed per-call overhead no longer dominates on a CPU;
the memory also over the largest M alone, since XLA's buffer assignment
changes with M) and prints the slopes next to the hand count's
per-example predictions.

  python -m benchmarks.batch_cost                    # writes runs/batch_cost
  python -m benchmarks.batch_cost --hidden=512,512,512 --max_batch=256
"""

import argparse
import json
import pathlib
import statistics
import sys
import time

import jax
import numpy as np

from equivlab import train
from equivlab.analysis import tables

_IMAGE_SHAPE = (28, 28, 1)
_NUM_CLASSES = 10


def hand_count_compute(
  m: int, num_hidden: int, width: int, d: int, k: int
) -> int:
  """The hand count of operations of one backward pass.

  Args:
    m: mini-batch size M.
    num_hidden: L, the number of hidden layers.
    width: d_H, their width.
    d: input size.
    k: number of classes K.

  Returns:
    `M [(L - 1)(3 d_H^2 + d_H) + d_H (2 d_H + d + 3K + 1) + 2K]`.
  """
  per_example = (
    (num_hidden - 1) * (3 * width**2 + width)
    + width * (2 * width + d + 3 * k + 1)
    + 2 * k
  )
  return m * per_example


def hand_count_memory(
  m: int, num_hidden: int, width: int, d: int, k: int
) -> int:
  """The hand count of memory (numbers) of one backward pass.

  Args:
    m: mini-batch size M.
    num_hidden: L, the number of hidden layers.
    width: d_H, their width.
    d: input size.
    k: number of classes K.

  Returns:
    `(L - 1)(d_H^2 + d_H) + d_H (d + K) + K + 2 M d_H`.
  """
  params = (num_hidden - 1) * (width**2 + width) + width * (d + k) + k
  return params + 2 * m * width


def fit_line(x, y) -> dict[str, float]:
  """Least-squares `y = intercept + slope * x` and its R^2.

  Args:
    x: `[P]` values, at least two distinct.
    y: `[P]` values.

  Returns:
    {"slope", "intercept", "r2"}.

  Raises:
    ValueError: if the lengths differ or there are fewer than two distinct
      x values.
  """
  x = np.asarray(x, np.float64)
  y = np.asarray(y, np.float64)
  if x.shape != y.shape or x.ndim != 1:
    raise ValueError(
      f"x and y must be 1-D of one length, got {x.shape} and {y.shape}."
    )
  if np.unique(x).size < 2:
    raise ValueError(f"need at least two distinct x values, got {x}.")
  slope, intercept = np.polyfit(x, y, 1)
  residual = np.sum((y - (intercept + slope * x)) ** 2)
  total = np.sum((y - y.mean()) ** 2)
  r2 = 1.0 - residual / total if total > 0 else 1.0
  return {"slope": float(slope), "intercept": float(intercept), "r2": r2}


def _compiled_step(batch_size: int, hidden: tuple[int, ...], seed: int):
  """The MLP's jitted SGD train step, a state and a random batch."""
  config = train.TrainConfig(
    model="mlp",
    model_kwargs=(("hidden_sizes", tuple(hidden)),),
    num_classes=_NUM_CLASSES,
    optimizer="sgd",
    learning_rate=1e-3,
    seed=seed,
  )
  rng = np.random.default_rng(seed)
  batch = {
    "image": rng.random((batch_size, *_IMAGE_SHAPE), np.float32),
    "label": rng.integers(0, _NUM_CLASSES, batch_size).astype(np.int32),
  }
  batch = jax.device_put(batch)
  state, steps = train.prepare(config, batch["image"])
  return steps.train_step, state, batch


def measure(
  batch_size: int,
  hidden: tuple[int, ...],
  steps: int,
  repeats: int,
  seed: int = 0,
) -> dict[str, float]:
  """Compiles and times one SGD train step of the MLP at one batch size.

  The step is the training engine's own (`equivlab.train.prepare`):
  forward, backward and the SGD update, jitted.

  Args:
    batch_size: M.
    hidden: widths of the MLP's hidden layers.
    steps: steps per timed repeat.
    repeats: timed repeats (the median is reported).
    seed: seeds the parameters and the random batch.

  Returns:
    {"batch_size", "seconds_per_step", "flops", "temp_bytes",
    "argument_bytes", "output_bytes", "alias_bytes", "total_bytes"}.
  """
  train_step, state, batch = _compiled_step(batch_size, hidden, seed)
  compiled = train_step.lower(state, batch).compile()
  memory = compiled.memory_analysis()
  cost = compiled.cost_analysis()
  if isinstance(cost, list):  # Older jax returned one dict per program.
    cost = cost[0]
  state, metrics = train_step(state, batch)  # Warm up.
  jax.block_until_ready(metrics)
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    for _ in range(steps):
      state, metrics = train_step(state, batch)
    jax.block_until_ready((state, metrics))
    times.append((time.perf_counter() - start) / steps)
  out = {
    "batch_size": batch_size,
    "seconds_per_step": statistics.median(times),
    "flops": float(cost.get("flops", float("nan"))),
    "temp_bytes": int(memory.temp_size_in_bytes),
    "argument_bytes": int(memory.argument_size_in_bytes),
    "output_bytes": int(memory.output_size_in_bytes),
    "alias_bytes": int(memory.alias_size_in_bytes),
  }
  out["total_bytes"] = (
    out["argument_bytes"]
    + out["output_bytes"]
    + out["temp_bytes"]
    - out["alias_bytes"]
  )
  return out


def _check(hidden, max_batch: int, steps: int, repeats: int) -> None:
  if not hidden or min(hidden) < 1:
    raise ValueError(f"hidden must be positive widths, got {hidden}.")
  for name, value in (
    ("max_batch", max_batch),
    ("steps", steps),
    ("repeats", repeats),
  ):
    if value < 1:
      raise ValueError(f"{name} must be >= 1, got {value}.")


def _measure_all(batch_sizes, hidden, steps: int, repeats: int) -> list[dict]:
  """`measure` at every batch size, with a progress line per M."""
  rows = []
  for m in batch_sizes:
    rows.append(measure(m, tuple(hidden), steps, repeats))
    print(
      f"M={m:5d}  {rows[-1]['seconds_per_step'] * 1e3:8.3f} ms/step  "
      f"temp {rows[-1]['temp_bytes']:>10d} B",
      file=sys.stderr,
      flush=True,
    )
  return rows


def fit_figures(
  rows: list[dict], time_fit_min_batch: int
) -> tuple[dict[str, dict[str, float]], int, int]:
  """Least-squares lines of every figure against M.

  Args:
    rows: one `measure` result per batch size.
    time_fit_min_batch: the time is fitted over M >= this (all M if fewer
      than two qualify).

  Returns:
    `(fits, time_min, large_min)`: figure name -> `fit_line`, and the
    smallest M of the time fit and of the "*_large_m" fits (M >= max M /
    4, where XLA's buffer assignment has settled).
  """
  ms = np.array([r["batch_size"] for r in rows], np.float64)
  timed = ms >= time_fit_min_batch
  if timed.sum() < 2:
    timed[:] = True
  large = ms >= max(ms.max() / 4, 1)
  if large.sum() < 2:
    large[:] = True
  col = lambda name: np.array([r[name] for r in rows], np.float64)
  fits = {
    "ms_per_step": fit_line(ms[timed], col("seconds_per_step")[timed] * 1e3),
    "flops": fit_line(ms, col("flops")),
    "temp_bytes": fit_line(ms, col("temp_bytes")),
    "total_bytes": fit_line(ms, col("total_bytes")),
    # XLA's buffer assignment changes with M (fusion, layouts), so small M
    # are not on one line with large M: fit the largest M separately.
    "temp_bytes_large_m": fit_line(ms[large], col("temp_bytes")[large]),
    "total_bytes_large_m": fit_line(ms[large], col("total_bytes")[large]),
  }
  return fits, int(ms[timed].min()), int(ms[large].min())


def compare_with_hand_count(hidden, fits, rows) -> dict[str, float]:
  """The fitted slopes next to the hand count's per-example figures."""
  num_hidden, width = len(hidden), hidden[0]
  d, k = int(np.prod(_IMAGE_SHAPE)), _NUM_CLASSES
  hand_flops_slope = hand_count_compute(1, num_hidden, width, d, k)
  hand_memory_slope = hand_count_memory(1, num_hidden, width, d, k) - (
    hand_count_memory(0, num_hidden, width, d, k)
  )
  total_floats = fits["total_bytes"]["slope"] / 4
  return {
    "hand_count_compute_per_example": hand_flops_slope,
    "xla_flops_per_example": fits["flops"]["slope"],
    "xla_over_hand_count_compute": fits["flops"]["slope"] / hand_flops_slope,
    "hand_count_memory_floats_per_example": hand_memory_slope,
    "xla_temp_floats_per_example": fits["temp_bytes"]["slope"] / 4,
    "xla_total_floats_per_example": total_floats,
    "xla_total_over_hand_count_memory": total_floats / hand_memory_slope,
    "xla_temp_floats_per_example_large_m": (
      fits["temp_bytes_large_m"]["slope"] / 4
    ),
    "xla_total_floats_per_example_large_m": (
      fits["total_bytes_large_m"]["slope"] / 4
    ),
    "hand_count_memory_parameters": hand_count_memory(
      0, num_hidden, width, d, k
    ),
    "time_per_example_us": fits["ms_per_step"]["slope"] * 1e3,
    "time_at_m1_us": rows[0]["seconds_per_step"] * 1e6,
  }


def _text(results: dict) -> str:
  """The measurement, fit and comparison tables (Markdown)."""
  table = tables.format_table(
    [
      {
        "M": r["batch_size"],
        "ms/step": r["seconds_per_step"] * 1e3,
        "MFLOP": r["flops"] / 1e6,
        "temp KiB": r["temp_bytes"] / 1024,
        "total KiB": r["total_bytes"] / 1024,
      }
      for r in results["rows"]
    ]
  )
  fit_table = tables.format_table(
    [
      {
        "figure": name,
        "slope per example": fit["slope"],
        "intercept": fit["intercept"],
        "R^2": fit["r2"],
      }
      for name, fit in results["fits"].items()
    ]
  )
  comparison = results["comparison"]
  return "\n\n".join(
    [
      f"MLP hidden={results['hidden']}, SGD train_step, {results['device']}",
      table,
      "Least-squares fits (time over M >= "
      f"{results['time_fit_min_batch']}, *_large_m over M >= "
      f"{results['large_m_fit_min_batch']}, the rest over all M):",
      fit_table,
      "Against the hand count (per example):",
      tables.format_table(
        [{"quantity": k, "value": float(v)} for k, v in comparison.items()]
      ),
    ]
  )


def run(
  out_dir: str | pathlib.Path,
  *,
  hidden: tuple[int, ...] = (256, 256),
  max_batch: int = 1024,
  steps: int = 20,
  repeats: int = 5,
  time_fit_min_batch: int = 64,
) -> dict:
  """Measures every batch size, fits the slopes, writes and prints them.

  Args:
    out_dir: where `results.json`, `batch_cost.md` and `batch_cost.png` go.
    hidden: widths of the MLP's hidden layers (L = len(hidden); the hand
      count assumes equal widths, d_H = hidden[0]).
    max_batch: the largest M; M runs over the powers of two up to it.
    steps: steps per timed repeat.
    repeats: timed repeats per M.
    time_fit_min_batch: the time slope is fitted over M >= this (all M if
      fewer than two qualify).

  Returns:
    The results (also in `results.json`).

  Raises:
    ValueError: if `hidden` is empty or has a non-positive width, or
      `max_batch`, `steps` or `repeats` is below 1.
  """
  _check(hidden, max_batch, steps, repeats)
  batch_sizes = [2**i for i in range(int(np.log2(max_batch)) + 1)]
  rows = _measure_all(batch_sizes, hidden, steps, repeats)
  fits, time_min, large_min = fit_figures(rows, time_fit_min_batch)
  results = {
    "hidden": list(hidden),
    "backend": jax.default_backend(),
    "device": str(jax.devices()[0]),
    "memory_figure": (
      "XLA compiled memory_analysis() of the jitted train_step: "
      "temp_size_in_bytes and argument+output+temp-alias bytes (static "
      "allocation of the compiled program, not process peak RSS)"
    ),
    "rows": rows,
    "fits": fits,
    "time_fit_min_batch": time_min,
    "large_m_fit_min_batch": large_min,
    "comparison": compare_with_hand_count(hidden, fits, rows),
  }
  out_dir = pathlib.Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  text = _text(results)
  (out_dir / "batch_cost.md").write_text(text + "\n")
  (out_dir / "results.json").write_text(json.dumps(results, indent=2))
  _plot(batch_sizes, rows, out_dir / "batch_cost.png")
  print(text)
  return results


def _plot(batch_sizes, rows, path) -> None:
  from matplotlib.figure import Figure  # noqa: PLC0415 (slow import)

  fig = Figure(figsize=(10, 3.6))
  axes = fig.subplots(1, 3)
  panels = (
    ("seconds_per_step", 1e3, "ms per step"),
    ("flops", 1e-6, "MFLOP per step (XLA)"),
    ("temp_bytes", 1 / 1024, "KiB (XLA memory_analysis)"),
  )
  for ax, (name, scale, label) in zip(axes, panels, strict=True):
    ax.loglog(batch_sizes, [r[name] * scale for r in rows], "o-", label=name)
    if name == "temp_bytes":
      total = [r["total_bytes"] * scale for r in rows]
      ax.loglog(batch_sizes, total, "s--", label="total_bytes")
      ax.legend(fontsize=8)
    ax.set_xlabel("mini-batch size M")
    ax.set_ylabel(label)
    ax.grid(alpha=0.3, which="both")
  fig.suptitle("train_step cost vs batch size M", fontsize=10)
  fig.tight_layout()
  fig.savefig(path, dpi=100)


def main(argv=None) -> None:
  """Parses the command line and runs the benchmark."""
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument(
    "--hidden",
    default="256,256",
    help="Comma-separated widths of the MLP's hidden layers.",
  )
  parser.add_argument(
    "--max_batch",
    type=int,
    default=1024,
    help="Largest mini-batch size; all powers of two up to it are timed.",
  )
  parser.add_argument(
    "--steps", type=int, default=20, help="Steps per timed repeat."
  )
  parser.add_argument(
    "--repeats", type=int, default=5, help="Timed repeats (median kept)."
  )
  parser.add_argument(
    "--out_dir",
    default="runs/batch_cost",
    help="Where results.json, batch_cost.md and batch_cost.png go.",
  )
  args = parser.parse_args(argv)
  run(
    args.out_dir,
    hidden=tuple(int(w) for w in args.hidden.split(",")),
    max_batch=args.max_batch,
    steps=args.steps,
    repeats=args.repeats,
  )


if __name__ == "__main__":
  main(sys.argv[1:])
