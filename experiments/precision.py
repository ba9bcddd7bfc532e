r"""Reduced precision: float32, bfloat16 and float16 training.

Does a 16-bit float save memory and time, and at what cost (Micikevicius et
al., "Mixed Precision Training", ICLR 2018)? The CNN and the P4CNN train
over several seeds in each `compute_dtype`: "float32", "bfloat16" (float32
master weights and loss), "float16" (the same, with dynamic loss scaling).
Recorded per model and precision: one train step's memory (master weights,
`probes.residual_bytes`, XLA's `memory_analysis()`) and median time, the
test accuracy (mean +- sample std), float16's skipped steps and loss
scales, and P4CNN's rotation-equivariance error of its lifting conv, first
group conv and logits in units of eps, beside their float32 distance.

    python -m experiments.precision

Writes into --workdir (default runs/precision): results.json (no wall
times), results.md (the tables with the step times), timings.json,
accuracy.png, memory.png, step_time.png, equivariance.png, and the runs
under runs/<model>_<precision>/seed<seed> (a rerun resumes there).
"""

import dataclasses
import functools
import itertools
import pathlib
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from equivlab import checks, data, testing, train
from equivlab.analysis import metrics, probes, tables, viz
from equivlab.nn import layers
from equivlab.ops import xla_options
from equivlab.training import steps as steps_lib
from equivlab.training import sweeps
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
    base_config(self)  # the fields shared with the engine
    for field, options in (("models", MODELS), ("dtypes", DTYPES)):
      names = getattr(self, field)
      if not (isinstance(names, tuple | list) and names) or (
        any(n not in options for n in names) or len(set(names)) < len(names)
      ):
        raise ValueError(
          f"{field} must be distinct names from {options}, got {names!r}."
        )
    if "float32" not in self.dtypes:
      raise ValueError(
        f"dtypes must include float32 (the reference), got {self.dtypes}."
      )
    checks.check_ints("cnn_features", self.cnn_features, minimum=1)
    for name in ("cnn_dense_features", "p4cnn_features", "num_equivariance"):
      checks.check_int(name, getattr(self, name), minimum=1)
    checks.check_int("num_timed_steps", self.num_timed_steps, minimum=1)


def base_config(config: Config) -> train.TrainConfig:
  """The `TrainConfig` every run starts from (Adam, cosine decay)."""
  return train.TrainConfig.from_fields(config, schedule="cosine")


def _variants(config: Config) -> dict[str, sweeps.Variant]:
  cnn = {"features": tuple(config.cnn_features)}
  cnn["dense_features"] = config.cnn_dense_features
  kwargs = {"cnn": cnn, "p4cnn": {"features": config.p4cnn_features}}
  variants = {}
  for model, dtype in itertools.product(config.models, config.dtypes):
    overrides = {"model": model, "model_kwargs": kwargs[model]}
    overrides["compute_dtype"] = dtype
    if dtype == "float16":  # Every step's record: its scale and skip.
      overrides["log_every_steps"] = 1
    variants[f"{model}_{dtype}"] = sweeps.Variant(overrides)
  return variants


def _tree_bytes(tree: Any) -> int:
  return int(sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree)))


def _compiled_steps(config, images, labels) -> dict[tuple[str, str], Any]:
  """(model, dtype) -> (compiled step, state, batch, memory record)."""
  base = dataclasses.replace(base_config(config), num_classes=10)
  batch = {"image": jnp.asarray(images), "label": jnp.asarray(labels)}
  compiled = {}
  for variant in _variants(config).values():
    run = dataclasses.replace(base, **variant.overrides)
    model, dtype = train.build_model(run), run.compute_dtype
    state, steps = train.prepare(run, images[:2], model=model)
    step = steps.train_step.lower(state, batch).compile()
    stats = step.memory_analysis()
    memory = {
      "params_bytes": _tree_bytes(state.params),
      "opt_state_bytes": _tree_bytes(state.opt_state),
      "activation_bytes": probes.residual_bytes(
        model, state.variables(), images, labels, compute_dtype=dtype
      ),
      "xla_argument_bytes": int(stats.argument_size_in_bytes),
      "xla_temp_bytes": int(stats.temp_size_in_bytes),
      "xla_peak_bytes": int(stats.peak_memory_in_bytes),
    }
    compiled[(run.model, dtype)] = (step, state, batch, memory)
  return compiled


def _time_steps(config: Config, compiled) -> dict[str, dict[str, float]]:
  """Median seconds per step of each (model, dtype), timed in turn."""
  states, seconds = {k: v[1] for k, v in compiled.items()}, {}
  for round_ in range(config.num_timed_steps + 1):
    for key, (step, _, batch, _) in compiled.items():
      start = time.perf_counter()
      states[key], metrics = step(states[key], batch)
      jax.block_until_ready((states[key], metrics))
      if round_:  # The first call of each is a warm-up.
        seconds.setdefault(key, []).append(time.perf_counter() - start)
  return {
    m: {d: float(np.median(seconds[(m, d)])) for d in config.dtypes}
    for m in config.models
  }


@functools.partial(xla_options.jit, static_argnums=0, inference=True)
def _apply(module: Any, variables: Any, x: jax.Array) -> jax.Array:
  # Modules hash by their attributes: one compilation per module and shape.
  return module.apply(variables, x)


def _p4_functions(model, variables, dtype: str):
  """name -> p4 function of the trained P4CNN in `dtype` (jitted)."""
  mixed = steps_lib.policy(train.StepSpec(compute_dtype=dtype))
  computed = mixed.cast_to_compute(variables)
  params, opts = computed["params"], {"padding": "VALID", "group": model.group}
  lift = layers.LiftingConv(model.features, 3, **opts)
  conv = layers.GroupConv(model.features, 3, **opts)
  return {
    "lifting conv": functools.partial(
      _apply, lift, {"params": params["LiftingConv_0"]}
    ),
    "group conv": functools.partial(
      _apply, conv, {"params": params["GroupConv_0"]}
    ),
    "logits": functools.partial(_apply, model, computed),
  }


def p4_errors(model, variables, images, dtype: str) -> dict[str, Any]:
  """Equivariance and rounding errors of P4CNN's p4 layers in `dtype`.

  `model` is a trained P4CNN (group "p4") with its float32 `variables`;
  `images` are square digits `[N, H, H, 1]`.

  Returns:
    name -> {"equivariance": the largest relative error over the rotations
    (`testing.equivariance_error`), "by_element": each rotation's,
    "rounding": the relative distance from the float32 output at the same
    (rounded) input}. The group convolution sees the ReLU of the lifting
    convolution's output in that precision.
  """
  ours = _p4_functions(model, variables, dtype)
  full = _p4_functions(model, variables, "float32")
  x = jnp.asarray(images, dtype)
  inputs = {"lifting conv": x, "logits": x}
  inputs["group conv"] = jax.nn.relu(ours["lifting conv"](x))
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


def _records(config, workdir, trained, test_x) -> list[dict[str, Any]]:
  """One record per model, precision and seed."""
  records = []
  for model, dtype in itertools.product(config.models, config.dtypes):
    name = f"{model}_{dtype}"
    for seed, result in zip(config.seeds, trained[name], strict=True):
      record = {"model": model, "dtype": dtype, "seed": seed}
      record |= {"params": result["num_params"], "history": result.history}
      record |= {k: result[k] for k in ("test_accuracy", "test_loss")}
      if dtype == "float16":  # its skipped steps and loss scales
        run_dir = workdir / "runs" / name / f"seed{seed}"
        steps = train.read_metrics(run_dir, "step")
        record["skipped_steps"] = int(sum(r["skipped"] for r in steps))
        record["first_loss_scale"] = steps[0]["loss_scale"]
        record["last_loss_scale"] = steps[-1]["loss_scale"]
      if model == "p4cnn":
        images = test_x[: config.num_equivariance]
        record["p4"] = p4_errors(result.model, result.variables, images, dtype)
      records.append(record)
  return records


def _row(records, memory, reference) -> dict[str, Any]:
  """The table row of one model and precision."""
  mean, std = metrics.mean_std([r["test_accuracy"] for r in records])
  mb = {k: f"{v / 2**20:.2f}" for k, v in memory.items()}
  skipped = [r["skipped_steps"] for r in records if "skipped_steps" in r]
  return {
    "model": records[0]["model"],
    "precision": records[0]["dtype"],
    "params": records[0]["params"],
    "weights MB": mb["params_bytes"],
    "activations MB": mb["activation_bytes"],
    "vs float32": f"{memory['activation_bytes'] / reference:.2f}",
    "XLA temp MB": mb["xla_temp_bytes"],
    "XLA peak MB": mb["xla_peak_bytes"],
    "test accuracy": f"{mean:.4f} +- {std:.4f}",
    "skipped steps": str(sum(skipped)) if skipped else "-",
    "accuracy_mean": mean,
    "accuracy_std": std,
    "memory": memory,
  }


def _p4_row(dtype: str, errors: list[dict[str, Any]]) -> dict[str, Any]:
  """The p4 table row of one precision, from every seed's `p4_errors`."""
  eps = float(jnp.finfo(dtype).eps)
  row = {"precision": dtype, "eps": f"{eps:.1e}"}
  for name in P4_LAYERS:
    equivariance = float(np.mean([e[name]["equivariance"] for e in errors]))
    rounding = float(np.mean([e[name]["rounding"] for e in errors]))
    row[f"{name} equiv."] = f"{equivariance:.1e} ({equivariance / eps:.2g} eps)"
    row[f"{name} vs float32"] = f"{rounding:.1e}"
    row[f"{name}_equivariance"] = equivariance
    row[f"{name}_rounding"] = rounding
  return row


def _tables(config, rows, p4_rows) -> str:
  """The deterministic tables (no times)."""
  shown = [c for c in rows[0] if "_" not in c and c != "memory"]
  text = tables.format_table(rows, shown) + (
    f"\n(test accuracy: mean +- sample standard deviation over "
    f"{config.num_seeds} seeds; memory of one train step of batch "
    f"{config.batch_size}: weights = float32 master copy, activations = "
    "what the backward pass keeps (jax.vjp residuals, with the "
    "compute-precision weights), XLA = compiled memory_analysis() on "
    f"{jax.default_backend()})"
  )
  if not p4_rows:
    return text
  shown = [c for c in p4_rows[0] if "_" not in c]
  return f"{text}\n\n{tables.format_table(p4_rows, shown)}" + (
    "\n(P4CNN's p4 layers, trained parameters, "
    f"{config.num_equivariance} test digits: largest relative "
    "equivariance error over the rotations by 90, 180, 270 degrees, "
    "mean over seeds, also in units of the precision's eps; 'vs "
    "float32' = relative distance of the layer's output from its "
    "float32 output)"
  )


def _timing_table(config, timings) -> str:
  rows = [
    {
      "model": model,
      "precision": dtype,
      "ms per step": f"{1000 * timings[model][dtype]:.1f}",
      "vs float32": f"{timings[model][dtype] / timings[model]['float32']:.2f}",
    }
    for model, dtype in itertools.product(config.models, config.dtypes)
  ]
  return tables.format_table(rows) + (
    f"\n(median of {config.num_timed_steps} steps of batch "
    f"{config.batch_size} per precision, the precisions timed in turn, on "
    f"{jax.default_backend()})"
  )


def _figures(config, workdir, rows, p4_rows, timings) -> None:
  found = {(r["model"], r["precision"]): r for r in rows}

  def series(value):  # precision -> value per model
    models = config.models
    return {d: [value(found[(m, d)]) for m in models] for d in config.dtypes}

  batch, models = config.batch_size, list(config.models)
  charts = [
    ("accuracy", models, series(lambda r: r["accuracy_mean"]),
     "test accuracy",
     f"Test accuracy, mean +- sample std over {config.num_seeds} seeds",
     "{:.3f}", series(lambda r: r["accuracy_std"])),
    ("memory", models,
     series(lambda r: r["memory"]["activation_bytes"] / 2**20),
     "MB kept for the backward pass",
     f"Activations of one train step (batch {batch})", "{:.1f}", None),
    ("step_time", models,
     series(lambda r: 1000 * timings[r["model"]][r["precision"]]),
     f"ms per step ({jax.default_backend()})",
     f"Train step time, batch {batch}", "{:.0f}", None),
  ]  # fmt: skip
  if p4_rows:
    ratios = {
      r["precision"]: [
        r[f"{n}_equivariance"] / float(jnp.finfo(r["precision"]).eps)
        for n in P4_LAYERS
      ]
      for r in p4_rows
    }
    charts.append(
      ("equivariance", list(P4_LAYERS), ratios,
       "equivariance error / eps of the precision",
       "P4CNN's p4 layers: rotation equivariance error in units of eps",
       "{:.2g}", None)
    )  # fmt: skip
  for name, names, values, ylabel, title, value_format, errors in charts:
    viz.plot_bars(
      names,
      values,
      workdir / f"{name}.png",
      errors=errors,
      ylabel=ylabel,
      title=title,
      value_format=value_format,
    )


def _load(config: Config, split: str):
  return data.load_dataset(
    config.dataset, split, data_dir=config.data_dir, download=config.download
  )


def run(config: Config, workdir: str | pathlib.Path) -> dict[str, Any]:
  """Trains every model in every precision over the seeds; measures them.

  Returns:
    The contents of results.json: "config", "runs" (one record per model,
    precision and seed), "rows" (per model and precision), "p4_rows" (per
    precision), "table".
  """
  workdir = pathlib.Path(workdir)
  trained, seconds = sweeps.train_grid(
    base_config(config), _variants(config), config.seeds, workdir
  )
  records = _records(config, workdir, trained, _load(config, "test")[0])
  batch = [a[: config.batch_size] for a in _load(config, "train")]
  compiled = _compiled_steps(config, *batch)
  timings = _time_steps(config, compiled)
  rows = []
  for model, dtype in itertools.product(config.models, config.dtypes):
    mine = [r for r in records if (r["model"], r["dtype"]) == (model, dtype)]
    reference = compiled[(model, "float32")][3]["activation_bytes"]
    rows.append(_row(mine, compiled[(model, dtype)][3], reference))
  p4_rows = [
    _p4_row(d, [r["p4"] for r in records if r["dtype"] == d and "p4" in r])
    for d in config.dtypes
    if "p4cnn" in config.models
  ]
  table = _tables(config, rows, p4_rows)
  _figures(config, workdir, rows, p4_rows, timings)
  results = {"config": dataclasses.asdict(config), "runs": records}
  results |= {"rows": rows, "p4_rows": p4_rows, "table": table}
  sweeps.write_results(
    workdir,
    results,
    table=table + "\n\n" + _timing_table(config, timings),
    timings={"step_seconds": timings, "run_seconds": seconds},
  )
  return results


define_flags, main = _common.entry_points(Config, run, "precision")

if __name__ == "__main__":
  _common.launch(main, define_flags)
