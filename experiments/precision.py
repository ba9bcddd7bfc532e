r"""Reduced precision (seed 004 6(a)): float32, bfloat16 and float16 training.

Seed 004 6(a) says float16 "would enable larger models ... as each value
uses less of the available memory" and that "training would be faster".
This measures both, and what they cost, for the CNN and the P4CNN on the
embedded digits over several seeds, in three precisions of the engine's
`TrainConfig.compute_dtype`:

- "float32": everything in float32.
- "bfloat16": forward and backward passes in bfloat16; float32 master
  weights and optimizer state; the loss in float32.
- "float16": the same in float16, with dynamic loss scaling
  (`jmp.DynamicLossScale`: a step with non-finite gradients is skipped and
  the scale halved).

Per model and precision it records:

- memory of one train step: the float32 master weights; the activations
  the backward pass keeps (the residuals of `jax.vjp` of the loss, with the
  compute-precision copy of the weights: what JAX asks any backend to
  hold); and XLA's compiled `memory_analysis()` of the step on this
  backend (temporaries; the peak as XLA reports it);
- the time of one step (the precisions' compiled steps timed in turn,
  median per precision) and its ratio to float32;
- the test accuracy (the engine's evaluation in that precision), mean +-
  SAMPLE std over seeds; for float16, the skipped steps and final scale;
- for P4CNN, the equivariance error of its p4 layers in that precision
  (`equivlab.testing.equivariance_error` over the rotations by 90, 180 and
  270 degrees) with the trained parameters: the lifting convolution, the
  first group convolution and the network's logits (invariant), also in
  units of the precision's machine epsilon, beside how far the same
  layer's output lies from its float32 output (its rounding error).

    python -m experiments.precision

Writes into --workdir (default runs/precision): results.json (no wall
times), results.md (the tables with the step times), timings.json,
accuracy.png, memory.png, step_time.png, equivariance.png, and one train
workdir per model, precision and seed under runs/ (a rerun resumes there).
"""

import dataclasses
import functools
import json
import pathlib
import time
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from equivlab import checks, data, testing, train
from equivlab.analysis import tables, viz
from equivlab.nn import layers
from equivlab.ops import xla_options
from equivlab.training import steps as steps_lib
from experiments import _common

MODELS = ("cnn", "p4cnn")
DTYPES = train.COMPUTE_DTYPES
# The p4 functions measured: name -> (input action, output action).
P4_LAYERS = {
  "lifting conv": ("image", "p4"),
  "group conv": ("p4", "p4"),
  "logits": ("image", "invariant"),
}


@dataclasses.dataclass(frozen=True)
class Config(_common.TrainingOptions, _common.SeedOptions):
  """Settings of the precision study.

  The defaults take about 15 minutes on 2 shared CPU cores.

  Attributes:
    models: "cnn" and/or "p4cnn".
    dtypes: compute precisions, from "float32", "bfloat16", "float16";
      float32 (the reference) must be one of them.
    num_epochs: training epochs per run.
    batch_size: training batch size (also of the timed and analysed step).
    learning_rate: peak learning rate of Adam (cosine decay to 0).
    train_limit: use only this many training digits (default: all).
    test_limit: use only this many test digits (default: all).
    cnn_features: channels of the CNN's convolution blocks.
    cnn_dense_features: width of the CNN's hidden dense layer.
    p4cnn_features: G-channels of P4CNN's hidden layers.
    loss_scale_init: the first loss scale of float16.
    num_equivariance: test digits the equivariance errors are measured on.
    num_timed_steps: steps timed per precision (in turn, after a warm-up).
  """

  models: tuple[str, ...] = MODELS
  dtypes: tuple[str, ...] = DTYPES
  num_epochs: int = 2
  batch_size: int = 64
  learning_rate: float = 3e-3
  train_limit: int | None = 2000
  test_limit: int | None = 1000
  cnn_features: tuple[int, ...] = (32, 64)
  cnn_dense_features: int = 128
  p4cnn_features: int = 10
  loss_scale_init: float = 2.0**15
  num_equivariance: int = 32
  num_timed_steps: int = 10

  def __post_init__(self):
    _common.check_config(self)
    _check_names("models", self.models, MODELS)
    _check_names("dtypes", self.dtypes, DTYPES)
    if "float32" not in self.dtypes:
      raise ValueError(
        f"dtypes must include float32 (the reference), got {self.dtypes}."
      )
    for name in (
      "num_epochs",
      "batch_size",
      "cnn_dense_features",
      "p4cnn_features",
      "num_equivariance",
      "num_timed_steps",
    ):
      checks.check_int(name, getattr(self, name), minimum=1)
    for name in ("train_limit", "test_limit"):
      checks.check_int(name, getattr(self, name), minimum=1, allow_none=True)
    checks.check_ints("cnn_features", self.cnn_features, minimum=1)
    checks.check_number(
      "learning_rate", self.learning_rate, minimum=0, strict_minimum=True
    )
    checks.check_number(
      "loss_scale_init", self.loss_scale_init, minimum=1, maximum=2.0**64
    )


def _check_names(field: str, values: Any, options: tuple[str, ...]) -> None:
  values = tuple(values) if isinstance(values, list | tuple) else values
  if (
    not isinstance(values, tuple)
    or not values
    or any(v not in options for v in values)
    or len(set(values)) != len(values)
  ):
    raise ValueError(
      f"{field} must be distinct names from {options}, got {values!r}."
    )


def model_kwargs(config: Config, model: str) -> dict[str, Any]:
  """The keyword arguments of `model` in this study."""
  if model == "cnn":
    return {
      "features": tuple(config.cnn_features),
      "dense_features": config.cnn_dense_features,
    }
  return {"features": config.p4cnn_features}


def base_config(config: Config) -> train.TrainConfig:
  """The `TrainConfig` every run starts from (Adam, cosine decay)."""
  return train.TrainConfig(
    **config.train_options(),
    train_limit=config.train_limit,
    test_limit=config.test_limit,
    num_epochs=config.num_epochs,
    batch_size=config.batch_size,
    learning_rate=config.learning_rate,
    schedule="cosine",
    loss_scale_init=config.loss_scale_init,
  )


def run_name(model: str, dtype: str) -> str:
  """The name of a (model, precision) run, e.g. "p4cnn_float16"."""
  return f"{model}_{dtype}"


def _variants(config: Config) -> dict[str, _common.Variant]:
  variants = {}
  for model in config.models:
    for dtype in config.dtypes:
      overrides = {
        "model": model,
        "model_kwargs": model_kwargs(config, model),
        "compute_dtype": dtype,
      }
      if dtype == "float16":  # Every step's record: its scale and skip.
        overrides["log_every_steps"] = 1
      variants[run_name(model, dtype)] = _common.Variant(overrides)
  return variants


# ---------------------------------------------------------------------------
# Measurements.
# ---------------------------------------------------------------------------


def residual_bytes(
  model: Any, variables: Any, images: Any, labels: Any, dtype: str
) -> int:
  """Bytes the backward pass of the training loss keeps, as JAX sees them.

  The leaves of `jax.vjp`'s backward function are the residuals of the
  forward pass (activations, masks, the compute-precision weights);
  `jax.eval_shape` gives their sizes without running anything.

  Args:
    model: a flax module taking `(x, train=True)`.
    variables: its variables (float32 "params", maybe "batch_stats").
    images: `[N, H, W, C]`.
    labels: `[N]` ints.
    dtype: the compute precision.

  Returns:
    The total size of the residuals in bytes.
  """
  mixed = steps_lib.policy(train.StepSpec(compute_dtype=dtype))
  rngs = {"dropout": jax.random.key(0)}

  def loss(params):
    computed = mixed.cast_to_compute({**variables, "params": params})
    logits, _ = model.apply(
      computed,
      mixed.cast_to_compute(images),
      train=True,
      mutable=["batch_stats"],
      rngs=rngs,
    )
    losses = steps_lib.example_losses(
      "softmax_ce", mixed.cast_to_output(logits), labels
    )
    return jnp.mean(losses)

  def residuals(params):
    return jax.tree_util.tree_leaves(jax.vjp(loss, params)[1])

  shapes = jax.eval_shape(residuals, variables["params"])
  return int(sum(s.size * np.dtype(s.dtype).itemsize for s in shapes))


def _tree_bytes(tree: Any) -> int:
  return int(sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree)))


def _compiled_steps(config, images, labels) -> dict[tuple[str, str], Any]:
  """(model, dtype) -> (compiled step, state, batch, memory record)."""
  base = dataclasses.replace(base_config(config), num_classes=10)
  batch = {"image": jnp.asarray(images), "label": jnp.asarray(labels)}
  compiled = {}
  for variant in _variants(config).values():
    run = dataclasses.replace(base, **variant.overrides)
    state, steps = train.prepare(run, images[:2])
    step = steps.train_step.lower(state, batch).compile()
    stats = step.memory_analysis()
    memory = {
      "params_bytes": _tree_bytes(state.params),
      "opt_state_bytes": _tree_bytes(state.opt_state),
      "activation_bytes": residual_bytes(
        train.build_model(run),
        state.variables(),
        batch["image"],
        batch["label"],
        run.compute_dtype,
      ),
      "xla_argument_bytes": int(stats.argument_size_in_bytes),
      "xla_temp_bytes": int(stats.temp_size_in_bytes),
      "xla_peak_bytes": int(stats.peak_memory_in_bytes),
    }
    key = (run.model, run.compute_dtype)
    compiled[key] = (step, state, batch, memory)
  return compiled


def _time_steps(config: Config, compiled) -> dict[str, dict[str, float]]:
  """Median seconds per step of each (model, dtype), timed in turn."""
  states = {key: value[1] for key, value in compiled.items()}
  seconds = {key: [] for key in compiled}
  for round_ in range(config.num_timed_steps + 1):
    for key, (step, _, batch, _) in compiled.items():
      start = time.perf_counter()
      states[key], metrics = step(states[key], batch)
      jax.block_until_ready((states[key], metrics))
      if round_:  # The first call of each is a warm-up.
        seconds[key].append(time.perf_counter() - start)
  timings: dict[str, dict[str, float]] = {}
  for (model, dtype), values in seconds.items():
    timings.setdefault(model, {})[dtype] = float(np.median(values))
  return timings


@functools.partial(xla_options.jit, static_argnums=0, inference=True)
def _apply(module: Any, variables: Any, x: jax.Array) -> jax.Array:
  # Modules hash by their attributes: one compilation per module, dtype
  # and shape, shared by every seed.
  return module.apply(variables, x, train=False)


class _Layer(nn.Module):
  """One p4 layer of P4CNN alone (a `train` keyword like the network)."""

  layer: Any

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    del train
    return self.layer(x)


def _p4_functions(model, variables, dtype: str):
  """name -> p4 function of the trained P4CNN in `dtype` (jitted)."""
  mixed = steps_lib.policy(train.StepSpec(compute_dtype=dtype))
  computed = mixed.cast_to_compute(variables)
  params = computed["params"]
  opts = {"padding": "VALID", "group": model.group}
  lift = _Layer(layers.LiftingConv(model.features, 3, **opts))
  conv = _Layer(layers.GroupConv(model.features, 3, **opts))
  lift_vars = {"params": {"layer": params["LiftingConv_0"]}}
  conv_vars = {"params": {"layer": params["GroupConv_0"]}}
  return {
    "lifting conv": functools.partial(_apply, lift, lift_vars),
    "group conv": functools.partial(_apply, conv, conv_vars),
    "logits": functools.partial(_apply, model, computed),
  }


def p4_errors(model, variables, images, dtype: str) -> dict[str, Any]:
  """Equivariance and rounding errors of P4CNN's p4 layers in `dtype`.

  Args:
    model: a trained `layers.P4CNN` (group "p4").
    variables: its float32 variables.
    images: square test digits `[N, H, H, 1]` (float32).
    dtype: the compute precision.

  Returns:
    name -> {"equivariance": the largest relative error over the
    rotations (`testing.equivariance_error`), "by_element": each
    rotation's, "rounding": `max |f_dtype(x) - f_float32(x)| / max
    |f_float32(x)|` at the same input x (already rounded to `dtype`): the
    layer's own rounding error}. The group convolution's input is the
    ReLU of the lifting convolution's output in that precision.
  """
  ours = _p4_functions(model, variables, dtype)
  full = _p4_functions(model, variables, "float32")
  x = jnp.asarray(images, dtype)
  inputs = {
    "lifting conv": x,
    "group conv": jax.nn.relu(ours["lifting conv"](x)),
    "logits": x,
  }
  result = {}
  for name, (action_in, action_out) in P4_LAYERS.items():
    errors = testing.equivariance_error(
      ours[name], inputs[name], group="p4", input=action_in, output=action_out
    )
    reference = full[name](inputs[name].astype(jnp.float32))
    result[name] = {
      "equivariance": max(errors.values()),
      "by_element": errors,
      "rounding": testing.relative_error(ours[name](inputs[name]), reference),
    }
  return result


# ---------------------------------------------------------------------------
# The study.
# ---------------------------------------------------------------------------


def _train(config: Config, workdir: pathlib.Path):
  return _common.train_grid(
    base_config(config), _variants(config), config.seeds, workdir
  )


def _scale_history(run_dir: pathlib.Path) -> dict[str, Any]:
  """Skipped steps and the last loss scale of a float16 run's records."""
  lines = (run_dir / "metrics.jsonl").read_text().splitlines()
  steps = [r for r in map(json.loads, lines) if r["kind"] == "step"]
  return {
    "skipped_steps": int(sum(r["skipped"] for r in steps)),
    "first_loss_scale": steps[0]["loss_scale"],
    "last_loss_scale": steps[-1]["loss_scale"],
  }


def _records(config, workdir, trained, test_x) -> list[dict[str, Any]]:
  """One record per model, precision and seed."""
  records = []
  for model in config.models:
    for dtype in config.dtypes:
      name = run_name(model, dtype)
      for seed, result in zip(config.seeds, trained[name], strict=True):
        record = {
          "model": model,
          "dtype": dtype,
          "seed": seed,
          "params": result["num_params"],
          "test_accuracy": result["test_accuracy"],
          "test_loss": result["test_loss"],
          "history": result.history,
        }
        if dtype == "float16":
          run_dir = workdir / "runs" / name / f"seed{seed}"
          record.update(_scale_history(run_dir))
        if model == "p4cnn":
          images = test_x[: config.num_equivariance]
          record["p4"] = p4_errors(
            result.model, result.variables, images, dtype
          )
        records.append(record)
  return records


def _mb(value: float) -> str:
  return f"{value / 2**20:.2f}"


def _rows(config, records, memory) -> list[dict[str, Any]]:
  rows = []
  for model in config.models:
    reference = memory[(model, "float32")]["activation_bytes"]
    for dtype in config.dtypes:
      mine = [r for r in records if (r["model"], r["dtype"]) == (model, dtype)]
      mean, std = _common.mean_std([r["test_accuracy"] for r in mine])
      mem = memory[(model, dtype)]
      skipped = [r["skipped_steps"] for r in mine if "skipped_steps" in r]
      rows.append(
        {
          "model": model,
          "precision": dtype,
          "params": mine[0]["params"],
          "weights MB": _mb(mem["params_bytes"]),
          "activations MB": _mb(mem["activation_bytes"]),
          "vs float32": f"{mem['activation_bytes'] / reference:.2f}",
          "XLA temp MB": _mb(mem["xla_temp_bytes"]),
          "XLA peak MB": _mb(mem["xla_peak_bytes"]),
          "test accuracy": f"{mean:.4f} +- {std:.4f}",
          "skipped steps": str(sum(skipped)) if skipped else "-",
          "accuracy_mean": mean,
          "accuracy_std": std,
          "memory": mem,
        }
      )
  return rows


def _p4_rows(config, records) -> list[dict[str, Any]]:
  rows = []
  for dtype in config.dtypes:
    mine = [
      r["p4"]
      for r in records
      if r["model"] == "p4cnn" and (r["dtype"] == dtype)
    ]
    eps = float(jnp.finfo(dtype).eps)
    row = {"precision": dtype, "eps": f"{eps:.1e}"}
    for name in P4_LAYERS:
      equivariance = float(np.mean([m[name]["equivariance"] for m in mine]))
      rounding = float(np.mean([m[name]["rounding"] for m in mine]))
      row[f"{name} equiv."] = (
        f"{equivariance:.1e} ({equivariance / eps:.2g} eps)"
      )
      row[f"{name} vs float32"] = f"{rounding:.1e}"
      row[f"{name}_equivariance"] = equivariance
      row[f"{name}_rounding"] = rounding
    rows.append(row)
  return rows


_HIDDEN = ("accuracy_mean", "accuracy_std", "memory")


def _tables(config, rows, p4_rows) -> str:
  """The deterministic tables (no times)."""
  columns = [c for c in rows[0] if c not in _HIDDEN]
  text = tables.format_table(rows, columns)
  text += (
    f"\n(test accuracy: mean +- sample standard deviation over "
    f"{config.num_seeds} seeds; memory of one train step of batch "
    f"{config.batch_size}: weights = float32 master copy, activations = "
    "what the backward pass keeps (jax.vjp residuals, with the "
    "compute-precision weights), XLA = compiled memory_analysis() on "
    f"{jax.default_backend()})"
  )
  if p4_rows:
    columns = [
      c for c in p4_rows[0] if not c.endswith(("_equivariance", "_rounding"))
    ]
    text += "\n\n" + tables.format_table(p4_rows, columns)
    text += (
      "\n(P4CNN's p4 layers, trained parameters, "
      f"{config.num_equivariance} test digits: largest relative "
      "equivariance error over the rotations by 90, 180, 270 degrees, "
      "mean over seeds, also in units of the precision's eps; 'vs "
      "float32' = relative distance of the layer's output from its "
      "float32 output)"
    )
  return text


def _timing_table(config, timings) -> str:
  rows = []
  for model in config.models:
    for dtype in config.dtypes:
      seconds = timings[model][dtype]
      rows.append(
        {
          "model": model,
          "precision": dtype,
          "ms per step": f"{1000 * seconds:.1f}",
          "vs float32": f"{seconds / timings[model]['float32']:.2f}",
        }
      )
  return tables.format_table(rows) + (
    f"\n(median of {config.num_timed_steps} steps of batch "
    f"{config.batch_size} per precision, the precisions timed in turn, on "
    f"{jax.default_backend()})"
  )


def _series(config, rows, value) -> dict[str, list[float]]:
  """precision -> `value(row)` per model, in `config.models` order."""
  found = {(r["model"], r["precision"]): r for r in rows}
  return {
    d: [value(found[(m, d)]) for m in config.models] for d in config.dtypes
  }


def _figures(config, workdir, rows, p4_rows, timings) -> None:
  models = list(config.models)
  viz.plot_bars(
    models,
    _series(config, rows, lambda r: r["accuracy_mean"]),
    workdir / "accuracy.png",
    errors=_series(config, rows, lambda r: r["accuracy_std"]),
    ylabel="test accuracy",
    title=f"Test accuracy, mean +- sample std over {config.num_seeds} seeds",
    value_format="{:.3f}",
  )
  viz.plot_bars(
    models,
    _series(config, rows, lambda r: r["memory"]["activation_bytes"] / 2**20),
    workdir / "memory.png",
    ylabel="MB kept for the backward pass",
    title=f"Activations of one train step (batch {config.batch_size})",
    value_format="{:.1f}",
  )
  viz.plot_bars(
    models,
    _series(config, rows, lambda r: 1000 * timings[r["model"]][r["precision"]]),
    workdir / "step_time.png",
    ylabel=f"ms per step ({jax.default_backend()})",
    title=f"Train step time, batch {config.batch_size}",
    value_format="{:.0f}",
  )
  if p4_rows:
    viz.plot_bars(
      list(P4_LAYERS),
      {
        r["precision"]: [
          r[f"{n}_equivariance"] / float(jnp.finfo(r["precision"]).eps)
          for n in P4_LAYERS
        ]
        for r in p4_rows
      },
      workdir / "equivariance.png",
      ylabel="equivariance error / eps of the precision",
      title="P4CNN's p4 layers: rotation equivariance error in units of eps",
      value_format="{:.2g}",
    )


def run(config: Config, workdir: str | pathlib.Path) -> dict[str, Any]:
  """Trains every model in every precision over the seeds; measures them.

  Args:
    config: the study's settings.
    workdir: where results.json, the PNGs and the per-run workdirs go.

  Returns:
    The contents of results.json: "config", "runs" (one record per model,
    precision and seed: accuracy, history, float16's skipped steps and
    loss scales, P4CNN's p4 errors), "rows" (one per model and precision:
    memory, accuracy mean and sample std), "p4_rows" (one per precision),
    "table".

  Raises:
    FileNotFoundError: if a tfds data set is not prepared.
  """
  workdir = pathlib.Path(workdir)
  test_x, _ = data.load_dataset(
    config.dataset, "test", data_dir=config.data_dir, download=config.download
  )
  trained, seconds = _train(config, workdir)
  records = _records(config, workdir, trained, test_x)
  train_x, train_y = data.load_dataset(
    config.dataset, "train", data_dir=config.data_dir, download=config.download
  )
  n = config.batch_size
  compiled = _compiled_steps(config, train_x[:n], train_y[:n])
  timings = _time_steps(config, compiled)
  memory = {key: value[3] for key, value in compiled.items()}
  rows = _rows(config, records, memory)
  p4_rows = _p4_rows(config, records) if "p4cnn" in config.models else []
  table = _tables(config, rows, p4_rows)
  _figures(config, workdir, rows, p4_rows, timings)
  results = {
    "config": dataclasses.asdict(config),
    "runs": records,
    "rows": rows,
    "p4_rows": p4_rows,
    "table": table,
  }
  _common.write_results(
    workdir,
    results,
    table=table + "\n\n" + _timing_table(config, timings),
    timings={"step_seconds": timings, "run_seconds": seconds},
  )
  return results


define_flags, main = _common.entry_points(Config, run, "precision")

if __name__ == "__main__":
  _common.launch(main, define_flags)
