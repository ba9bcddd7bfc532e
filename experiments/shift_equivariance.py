r"""Where the dense-head CNN loses translation invariance, layer by layer.

Seed 002 problem 1(3) and seed 003 question 3: convolutions commute with
shifts, so why does seed 003's CNN do worse on shifted digits? This trains
the "cnn" of `equivlab.models` (3x3 conv, ReLU, 2x2 stride-2 max pool,
twice; then a dense hidden layer and dense logits) on the embedded digits,
once with circular and once with zero ("SAME") padding, then shifts test
digits circularly by `(dy, dx)` and measures at every stage

  error = min_t ||f(shift x) - roll(f(x), t)|| / ||f(x)||

with `equivlab.probes.shift_equivariance_error` (t over all shifts of the
feature map; for the dense layers, whose outputs no shift acts on, the
invariance error `||f(shift x) - f(x)|| / ||f(x)||`). The stages are the
outputs of conv1, pool1 (ReLU + pool), conv2, pool2, dense (the hidden
layer, before its ReLU) and logits; the conv and dense outputs are read
with `probes.intermediates`, the pool outputs recomputed from them as
`max_pool(relu(conv))`, as in `models.CNN`. It also reports how often the
predicted class changes under each shift.

Writes to `--workdir`:
  results.json            errors and best output shifts per stage, padding
                          and input shift; accuracies; the settings;
  shift_equivariance.md   the error table (Markdown);
  shift_equivariance.png  error per stage, one line per padding and shift.

  python -m experiments.shift_equivariance --workdir=/tmp/shift_equivariance
"""

import functools
import json
import os
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from absl import flags, logging

from equivlab import data, models, probes, viz
from equivlab import train as train_lib
from experiments import _launch

STAGES = ("conv1", "pool1", "conv2", "pool2", "dense", "logits")
DEFAULT_SHIFTS = ((0, 1), (0, 2), (0, 3), (0, 4), (1, 1), (2, 2))


def stage_outputs(
  model: nn.Module, variables: dict, images: jax.Array
) -> dict[str, jax.Array]:
  """The outputs of the stages of a two-block dense-head `models.CNN`.

  Args:
    model: `models.CNN` with two conv blocks, `pool=True`, `head="dense"`
      and `norm=None` (the "cnn" defaults).
    variables: its variables.
    images: `[N, H, W, C]`.

  Returns:
    Stage name (`STAGES`) -> array: conv outputs `[N, H', W', C']` before
    the ReLU, pool outputs after ReLU and pool, the dense hidden layer's
    pre-activation `[N, D]` and the logits `[N, K]`.

  Raises:
    ValueError: if the model is not of that structure.
  """
  found = probes.intermediates(model, variables, images, train=False)
  needed = ("Conv_0", "Conv_1", "Dense_0", "Dense_1")
  if any(name not in found for name in needed) or "Conv_2" in found:
    raise ValueError(
      "expected a models.CNN with two conv blocks and a dense head "
      f"(submodules {needed}), got submodules {sorted(found)}."
    )
  if getattr(model, "norm", None) is not None or not model.pool:
    raise ValueError(
      "expected a models.CNN with norm=None and pool=True, got "
      f"norm={model.norm!r}, pool={model.pool!r}."
    )
  pool = lambda x: nn.max_pool(nn.relu(x), (2, 2), strides=(2, 2))
  return {
    "conv1": found["Conv_0"],
    "pool1": pool(found["Conv_0"]),
    "conv2": found["Conv_1"],
    "pool2": pool(found["Conv_1"]),
    "dense": found["Dense_0"],
    "logits": found["Dense_1"],
  }


def layer_errors(
  model: nn.Module,
  variables: dict,
  images: jax.Array,
  shift: tuple[int, int],
) -> dict[str, dict]:
  """Shift equivariance error of every stage for one circular input shift.

  Args:
    model: a dense-head `models.CNN` (see `stage_outputs`).
    variables: its variables.
    images: `[N, H, W, C]`.
    shift: `(dy, dx)` in pixels; the images are rolled circularly.

  Returns:
    Stage -> {"error": float, "best_shift": [ty, tx]} (best_shift is
    [0, 0] for the dense stages), plus "prediction_changed": the fraction
    of images whose predicted class changes.
  """
  errors, shifts, changed = jax.device_get(
    _layer_errors(model, variables, jnp.asarray(images), jnp.asarray(shift))
  )
  out = {
    name: {
      "error": float(errors[name]),
      "best_shift": [int(v) for v in shifts[name]],
    }
    for name in STAGES
  }
  out["prediction_changed"] = float(changed)
  return out


@functools.partial(jax.jit, static_argnums=0)
def _layer_errors(model, variables, images, shift):
  # One compilation per model and image shape; the shift is traced.
  shifted = jnp.roll(images, (shift[0], shift[1]), axis=(1, 2))
  before = stage_outputs(model, variables, images)
  after = stage_outputs(model, variables, shifted)
  errors, shifts = {}, {}
  for name in STAGES:
    errors[name], shifts[name] = probes.shift_equivariance_error(
      before[name], after[name]
    )
  changed = jnp.argmax(before["logits"], -1) != jnp.argmax(after["logits"], -1)
  return errors, shifts, jnp.mean(changed)


def _train(
  config: train_lib.TrainConfig,
  images: np.ndarray,
  labels: np.ndarray,
  num_steps: int,
) -> train_lib.TrainState:
  """`num_steps` steps of `train_lib.train_step` on one device."""
  state = train_lib.create_train_state(
    jax.random.key(config.seed), config, images[:2]
  )
  step, epoch = 0, 0
  while step < num_steps:
    for batch in data.iterate_batches(
      images, labels, config.batch_size, key=state.key, epoch=epoch
    ):
      if step == num_steps:
        break
      state, metrics = train_lib.train_step(state, batch)
      step += 1
      if step % 50 == 0:
        logging.info("step %d loss %.4f", step, float(metrics["loss"]))
    epoch += 1
  return state


def run(
  workdir: str,
  *,
  paddings: Sequence[str] = ("CIRCULAR", "SAME"),
  shifts: Sequence[tuple[int, int]] = DEFAULT_SHIFTS,
  train_steps: int = 300,
  batch_size: int = 128,
  num_images: int = 500,
  features: Sequence[int] = (32, 64),
  dense_features: int = 128,
  train_limit: int | None = None,
  seed: int = 0,
) -> dict:
  """Trains one CNN per padding, measures every stage, writes the results.

  Args:
    workdir: output directory.
    paddings: conv paddings to compare ("CIRCULAR", "SAME", ...).
    shifts: input shifts `(dy, dx)`.
    train_steps: Adam steps of training (0: measure at initialisation).
    batch_size: training batch size.
    num_images: test digits the errors are measured on.
    features: channels of the two conv blocks.
    dense_features: width of the dense hidden layer.
    train_limit: use only the first N training digits.
    seed: seeds initialisation and shuffling.

  Returns:
    The results (also in `workdir/results.json`).

  Raises:
    ValueError: if `features` does not have two entries, `shifts` is
      empty, or `num_images` or `batch_size` is below 1.
  """
  if len(features) != 2:
    raise ValueError(f"features must have two entries, got {features}.")
  if not shifts:
    raise ValueError("shifts must hold at least one (dy, dx), got none.")
  if num_images < 1 or batch_size < 1:
    raise ValueError(
      f"num_images and batch_size must be >= 1, got {num_images} and "
      f"{batch_size}."
    )
  train_images, train_labels = data.embedded_digits("train")
  test_images, test_labels = data.embedded_digits("test")
  if train_limit is not None:
    train_images = train_images[:train_limit]
    train_labels = train_labels[:train_limit]
  probe = jnp.asarray(test_images[:num_images])
  probe_labels = jnp.asarray(test_labels[:num_images])
  shifts = [tuple(int(v) for v in s) for s in shifts]
  results = {
    "settings": {
      "paddings": list(paddings),
      "shifts": [list(s) for s in shifts],
      "train_steps": train_steps,
      "batch_size": batch_size,
      "num_images": int(probe.shape[0]),
      "features": list(features),
      "dense_features": dense_features,
      "seed": seed,
    },
    "stages": list(STAGES),
    "models": {},
  }
  for padding in paddings:
    config = train_lib.TrainConfig(
      model="cnn",
      model_kwargs=(
        ("padding", padding),
        ("features", tuple(features)),
        ("dense_features", dense_features),
      ),
      num_classes=10,
      batch_size=batch_size,
      seed=seed,
      progress=False,
    )
    logging.info("training padding=%s for %d steps", padding, train_steps)
    state = _train(config, train_images, train_labels, train_steps)
    model = models.get_model(
      "cnn", num_classes=10, **train_lib.model_kwargs_dict(config)
    )
    variables = state.variables()
    by_shift = {}
    for shift in shifts:
      by_shift[f"{shift[0]},{shift[1]}"] = layer_errors(
        model, variables, probe, shift
      )
    logits = stage_outputs(model, variables, probe)["logits"]
    accuracy = float(jnp.mean(jnp.argmax(logits, -1) == probe_labels))
    results["models"][padding] = {"accuracy": accuracy, "shifts": by_shift}
    logging.info("padding=%s accuracy %.4f", padding, accuracy)
  os.makedirs(workdir, exist_ok=True)
  table = _table(results)
  with open(os.path.join(workdir, "results.json"), "w") as f:
    json.dump(results, f, indent=2)
  with open(os.path.join(workdir, "shift_equivariance.md"), "w") as f:
    f.write(table + "\n")
  _plot(results, os.path.join(workdir, "shift_equivariance.png"))
  print(table)
  return results


def _table(results: dict) -> str:
  rows = []
  for padding, entry in results["models"].items():
    for name in (*STAGES, "prediction_changed"):
      row = {"padding": padding, "stage": name}
      for shift, errors in entry["shifts"].items():
        value = errors[name]
        if isinstance(value, dict):
          t = value["best_shift"]
          value = f"{value['error']:.2e} @({t[0]},{t[1]})"
        else:
          value = f"{value:.3f}"
        row[f"shift ({shift})"] = value
      rows.append(row)
  accuracies = ", ".join(
    f"{p}: {e['accuracy']:.4f}" for p, e in results["models"].items()
  )
  return (
    viz.format_table(rows)
    + "\n\nerror @(ty,tx): relative error at the best output shift; "
    + "prediction_changed: fraction of predictions changed by the shift.\n"
    + f"test accuracy on the probe digits: {accuracies}"
  )


def _plot(results: dict, path: str) -> None:
  from matplotlib.figure import Figure  # noqa: PLC0415 (slow import)

  paddings = list(results["models"])
  fig = Figure(figsize=(4.2 * len(paddings) + 0.6, 3.8))
  axes = fig.subplots(1, len(paddings), sharey=True, squeeze=False)[0]
  for ax, padding in zip(axes, paddings, strict=True):
    entry = results["models"][padding]
    for i, (shift, errors) in enumerate(entry["shifts"].items()):
      # Exact zeros cannot show on a log axis: floor them at 1e-9.
      ax.semilogy(
        range(len(STAGES)),
        [max(errors[name]["error"], 1e-9) for name in STAGES],
        "o-",
        color=f"C{i}",
        label=f"shift ({shift})",
      )
    ax.set_xticks(range(len(STAGES)), STAGES, fontsize=8)
    ax.set_title(f"padding {padding} (accuracy {entry['accuracy']:.3f})")
    ax.grid(alpha=0.3)
  axes[0].set_ylabel("shift equivariance error (floor 1e-9 = exact)")
  axes[-1].legend(fontsize=8)
  fig.suptitle("Dense-head CNN: where shift equivariance is lost", fontsize=10)
  fig.tight_layout()
  fig.savefig(path, dpi=100)


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> dict:
  """Registers this experiment's flags; returns their holders by name.

  Args:
    flag_values: where to register them; a fresh `flags.FlagValues()` in
      tests.

  Returns:
    Flag holders by flag name.
  """
  holders = [
    flags.DEFINE_string(
      "workdir",
      "/tmp/shift_equivariance",
      "Directory for results.json, the table and the plot.",
      flag_values=flag_values,
    ),
    flags.DEFINE_list(
      "paddings",
      ["CIRCULAR", "SAME"],
      "Conv paddings to compare (CIRCULAR, SAME).",
      flag_values=flag_values,
    ),
    flags.DEFINE_list(
      "shifts",
      [f"{dy}:{dx}" for dy, dx in DEFAULT_SHIFTS],
      "Input shifts as dy:dx, comma-separated.",
      flag_values=flag_values,
    ),
    flags.DEFINE_integer(
      "train_steps",
      300,
      "Adam steps of training before measuring (0: at initialisation).",
      flag_values=flag_values,
    ),
    flags.DEFINE_integer(
      "batch_size", 128, "Training batch size.", flag_values=flag_values
    ),
    flags.DEFINE_integer(
      "num_images",
      500,
      "Test digits the errors are measured on.",
      flag_values=flag_values,
    ),
    flags.DEFINE_integer(
      "seed", 0, "Seed of init and shuffling.", flag_values=flag_values
    ),
  ]
  return {holder.name: holder for holder in holders}


def parse_shifts(values: Sequence[str]) -> list[tuple[int, int]]:
  """`["0:1", "2:2"]` -> `[(0, 1), (2, 2)]`.

  Raises:
    ValueError: if an entry is not `dy:dx` with integers.
  """
  out = []
  for text in values:
    parts = text.split(":")
    try:
      if len(parts) != 2:
        raise ValueError
      out.append((int(parts[0]), int(parts[1])))
    except ValueError:
      raise ValueError(
        f"a shift must be 'dy:dx' with integers, got {text!r}."
      ) from None
  return out


def main(argv, holders: dict) -> None:
  """Reads the flags and runs the experiment."""
  del argv
  value = {name: holder.value for name, holder in holders.items()}
  run(
    value["workdir"],
    paddings=value["paddings"],
    shifts=parse_shifts(value["shifts"]),
    train_steps=value["train_steps"],
    batch_size=value["batch_size"],
    num_images=value["num_images"],
    seed=value["seed"],
  )


if __name__ == "__main__":
  _launch.run(main, define_flags)
