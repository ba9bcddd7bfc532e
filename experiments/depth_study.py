r"""Depth, activations, residual paths and batch norm: vanishing gradients.

Saturated units pass back `act'(z) ~ 0`, so the lower layers' gradients
shrink with depth (Glorot & Bengio, AISTATS 2010); residual blocks (He et
al., CVPR 2016) and ReLU are the remedies. Each activation, with and
without residual paths and batch norm, at each depth L of "deep_mlp" or
"deep_cnn" trains with momentum SGD at a constant rate; `probes.make_probe`
measures each layer's `||dL/dW_l||` and the hidden units' saturated
fraction and mean slope at the engine's initial state and after 1 epoch (a
1-epoch run, the longer run's first epoch at a constant rate); then the
test accuracy. A non-finite loss is recorded as diverged.

    python -m experiments.depth_study
    python -m experiments.depth_study --architecture=cnn --num_epochs=5 \
      --workdir=runs/depth_study_cnn

Writes into --workdir (default runs/depth_study): results.json, results.md,
timings.json, gradient_norms.png (solid: init, dashed: after 1 epoch) and
the runs under runs/<variant>/L<depth>/epochs<n> (a rerun resumes).
"""

import dataclasses
import itertools
import pathlib
import time
from typing import Any

import jax
import numpy as np
from absl import logging

from equivlab import checks, data, train
from equivlab.analysis import probes
from equivlab.analysis.tables import format_table
from equivlab.nn import models
from equivlab.training import sweeps
from experiments import _common

ARCHITECTURES = {"mlp": "deep_mlp", "cnn": "deep_cnn"}
# The --residual and --batch_norm choices: which of (False, True) to run.
SUBSETS = {"both": (False, True), "with": (True,), "without": (False,)}


@dataclasses.dataclass(frozen=True)
class Config(_common.TrainingOptions):
  """Settings of the depth study.

  Attributes:
    architecture: "mlp" (DeepMLP: dense layers) or "cnn" (DeepCNN: a 3x3
      stride-2 stem, 3x3 convs, global average pooling).
    depths: numbers of hidden layers L, comma-separated.
    activations: activations to compare (sigmoid, tanh, relu).
    residual: run the variants with residual connections ("with"),
      without ("without") or both ("both").
    batch_norm: run the variants with batch norm ("with"), without
      ("without") or both ("both").
    num_epochs: training epochs per variant (>= 1; probed after epoch 1).
    batch_size: training batch size.
    learning_rate: step size of momentum SGD (momentum 0.9, constant).
    width: units (mlp) or channels (cnn) per layer; default 128 / 16.
    seed: seeds initialisation and shuffling.
    train_limit: use only this many training digits (default: all).
    test_limit: use only this many test digits (default: all).
    probe_size: training digits the gradient norms and saturation are
      measured on (the first ones).
  """

  architecture: str = "mlp"
  depths: tuple[int, ...] = (2, 4, 8, 16, 32)
  activations: tuple[str, ...] = ("sigmoid", "tanh", "relu")
  residual: str = "both"
  batch_norm: str = "both"
  num_epochs: int = 3
  batch_size: int = 128
  learning_rate: float = 0.05
  width: int | None = None
  seed: int = 0
  train_limit: int | None = None
  test_limit: int | None = None
  probe_size: int = 512

  def __post_init__(self):
    train.TrainConfig.from_fields(self)  # the fields shared with the engine
    checks.check_choice("architecture", self.architecture, ARCHITECTURES)
    checks.check_ints("depths", self.depths, minimum=1)
    if isinstance(self.activations, str) or not self.activations:
      raise ValueError(
        "activations must name at least one of "
        f"{models.DEPTH_ACTIVATIONS}, got {self.activations!r}."
      )
    for activation in self.activations:
      checks.check_choice("activations", activation, models.DEPTH_ACTIVATIONS)
    checks.check_choice("residual", self.residual, SUBSETS)
    checks.check_choice("batch_norm", self.batch_norm, SUBSETS)
    checks.check_int("probe_size", self.probe_size, minimum=1)
    checks.check_int("width", self.width, minimum=1, allow_none=True)


def grid(config: Config) -> dict[str, dict[str, Any]]:
  """Variant name ("relu+res+bn", "sigmoid") -> model kwargs but the depth."""
  variants = {}
  for activation, residual, batch_norm in itertools.product(
    config.activations, SUBSETS[config.residual], SUBSETS[config.batch_norm]
  ):
    name = activation + "+res" * residual + "+bn" * batch_norm
    variants[name] = {
      "activation": activation,
      "residual": residual,
      "batch_norm": batch_norm,
    }
    if config.width is not None:
      variants[name]["width"] = config.width
  return variants


def train_config(
  config: Config, model_kwargs: dict[str, Any], num_classes: int
) -> train.TrainConfig:
  """The `TrainConfig` of one variant and depth (`model_kwargs` with it)."""
  return train.TrainConfig.from_fields(
    config,
    model=ARCHITECTURES[config.architecture],
    model_kwargs=model_kwargs,
    num_classes=num_classes,
    optimizer="momentum",
    momentum=0.9,
    # Constant: the 1-epoch run is then the first epoch of the longer one.
    schedule="constant",
  )


def _probe_batch(config: Config) -> tuple[np.ndarray, np.ndarray, int]:
  """The first `probe_size` training digits, and the number of classes."""
  images, labels = data.load_dataset(
    config.dataset, "train", data_dir=config.data_dir, download=config.download
  )
  images, labels = images[: config.train_limit], labels[: config.train_limit]
  size = config.probe_size
  return images[:size], labels[:size], int(labels.max()) + 1


def _train(config: train.TrainConfig, workdir: pathlib.Path):
  """A `TrainResult`, or where the loss became non-finite."""
  try:
    return train.train_and_evaluate(config, workdir)
  except train.NonFiniteLossError as error:
    logging.warning("%s diverged: %s", workdir, error)
    return f"non-finite loss {error.loss} at step {error.step}"


def _probe_values(probe, variables, images, labels) -> dict[str, Any]:
  found = jax.device_get(probe(variables, images, labels))
  return {
    "grad_norms": {k: float(v) for k, v in found["grad_norms"].items()},
    "saturation": float(np.mean(list(found["saturation"].values()))),
    "mean_slope": float(np.mean(list(found["mean_slope"].values()))),
    "layer_saturation": {k: float(v) for k, v in found["saturation"].items()},
  }


def measure_variant(
  base: train.TrainConfig, run_dir: pathlib.Path, images, labels
) -> dict[str, Any]:
  """Probes one variant at init and after 1 epoch, trains it, tests it.

  Args:
    base: the variant's full-length `TrainConfig`.
    run_dir: the 1-epoch and the full run go to `epochs1` and
      `epochs<num_epochs>` under it (one run when `num_epochs` is 1).
    images: the probe batch `[P, H, W, C]`.
    labels: its labels `[P]`.

  Returns:
    {"init", "epoch1": `_probe_values` (None if the run diverged in its
    first epoch), "test_accuracy", "train_loss" (None if diverged),
    "diverged" (None, or where the loss became non-finite),
    "epoch1_matches_full_run" (the 1-epoch run's epoch-1 metrics equal the
    full run's, bitwise)}.
  """
  probe = probes.make_probe(train.build_model(base))
  init = train.create_train_state(train.init_key(base), base, images[:2])
  entry = {"init": _probe_values(probe, init.variables(), images, labels)}
  first = _train(dataclasses.replace(base, num_epochs=1), run_dir / "epochs1")
  full = first
  if base.num_epochs > 1:
    full = _train(base, run_dir / f"epochs{base.num_epochs}")
  good, diverged = not isinstance(first, str), isinstance(full, str)
  same = None if diverged or not good else first.history[0] == full.history[0]
  epoch1 = first.variables if good else None
  entry |= {
    "epoch1": epoch1 and _probe_values(probe, epoch1, images, labels),
    "diverged": full if diverged else None,
    "test_accuracy": None if diverged else full["test_accuracy"],
    "train_loss": None if diverged else full["train_loss"],
    "epoch1_matches_full_run": same,
  }
  if same is False:
    logging.warning("%s: the 1-epoch run left the full run's path", run_dir)
  return entry


def _measure(config: Config, workdir: pathlib.Path):
  """Every variant and depth: (variant -> depth -> entry, seconds)."""
  images, labels, num_classes = _probe_batch(config)
  variants, seconds, depths = {}, {}, config.depths
  for (name, kwargs), depth in itertools.product(grid(config).items(), depths):
    base = train_config(config, {**kwargs, "depth": depth}, num_classes)
    start, run_dir = time.perf_counter(), workdir / "runs" / name / f"L{depth}"
    entry = measure_variant(base, run_dir, images, labels)
    variants.setdefault(name, {})[str(depth)] = entry
    seconds[f"{name} L={depth}"] = time.perf_counter() - start
    logging.info("%s L=%d: %s", name, depth, entry["test_accuracy"])
  return variants, seconds


def _hidden(grad_norms: dict[str, float]) -> list[float]:
  """The hidden layers' gradient norms, from layer 1 up."""
  return [v for k, v in grad_norms.items() if k.startswith("layer_")]


def gradient_ratio(grad_norms: dict[str, float]) -> float:
  """`||dL/dW_2|| / ||dL/dW_L||`, counting hidden layers from 1.

  Layer 1's kernel has the input's size, so layer 2 is the lowest one
  comparable with the others; at L = 2 the ratio is 1; a last gradient of
  exactly 0 gives inf.
  """
  hidden = _hidden(grad_norms)
  low, last = hidden[min(1, len(hidden) - 1)], hidden[-1]
  return low / last if last > 0 else float("inf")


def _pair(entry: dict[str, Any], read, fmt: str) -> str:
  """One probe value as "at init / after epoch 1" ("-": diverged)."""
  values = (entry["init"], entry["epoch1"])
  return " / ".join("-" if v is None else fmt.format(read(v)) for v in values)


def tables(config: Config, variants: dict[str, dict[str, Any]]) -> str:
  """The accuracy, gradient-ratio, saturation and slope tables (Markdown)."""
  after = "at init / after 1 epoch:"
  kinds = {
    f"Test accuracy after {config.num_epochs} epochs (L = hidden layers; "
    f"{config.architecture}):": lambda e: (
      "diverged" if e["diverged"] is not None else f"{e['test_accuracy']:.3f}"
    ),
    "||dL/dW_2|| / ||dL/dW_L|| (hidden layer 2 over hidden layer L, "
    f"counting from 1; layer 1's input has another size), {after}": lambda e: (
      _pair(e, lambda p: gradient_ratio(p["grad_norms"]), "{:.2e}")
    ),
    "Fraction of saturated hidden units (act'(z) < 0.1 act'(0+)), "
    f"{after}": lambda e: _pair(e, lambda p: p["saturation"], "{:.2f}"),
    f"Mean activation slope act'(z) over hidden units, {after}": lambda e: (
      _pair(e, lambda p: p["mean_slope"], "{:.3f}")
    ),
  }
  parts = []
  for title, cell in kinds.items():
    rows = [
      {"variant": name}
      | {f"L={d}": cell(by_depth[str(d)]) for d in config.depths}
      for name, by_depth in variants.items()
    ]
    parts += [title, format_table(rows)]
  return "\n\n".join(parts)


def plot_gradient_norms(
  config: Config, variants: dict[str, dict[str, Any]], path: pathlib.Path
) -> None:
  """Per-layer gradient norms: one panel per variant, one colour per depth."""
  from matplotlib.figure import Figure  # noqa: PLC0415 (slow import)

  ncols = min(4, len(variants))
  nrows = -(-len(variants) // ncols)
  fig = Figure(figsize=(3.6 * ncols, 2.9 * nrows))
  axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
  for ax, (name, by_depth) in zip(axes, variants.items(), strict=False):
    for i, depth in enumerate(config.depths):
      for when, style in (("init", "-"), ("epoch1", "--")):
        if (probe := by_depth[str(depth)][when]) is not None:
          norms = np.maximum(_hidden(probe["grad_norms"]), 1e-30)
          label = f"L={depth}" if style == "-" else None
          xs = np.arange(1, len(norms) + 1)
          ax.semilogy(xs, norms, style, color=f"C{i}", label=label)
    ax.set(title=name, xlabel="hidden layer l (from 1)", ylabel="||dL/dW_l||")
    ax.grid(alpha=0.3)
  for ax in axes[len(variants) :]:
    ax.set_visible(False)
  axes[0].legend(fontsize=7, title="solid: init, dashed: 1 epoch")
  fig.suptitle(f"Per-layer gradient norms ({config.architecture})", fontsize=10)
  fig.tight_layout()
  fig.savefig(path, dpi=90)


def run(config: Config, workdir: str | pathlib.Path) -> dict[str, Any]:
  """Trains and probes every variant and depth; writes tables and a plot.

  Returns:
    The contents of results.json: "config", "variants" (variant name ->
    depth (a string) -> the entry of `measure_variant`), "table".

  Raises:
    FileNotFoundError: if a tfds data set is not prepared.
    ValueError: if a batch is larger than the (limited) training set.
  """
  workdir = pathlib.Path(workdir)
  variants, seconds = _measure(config, workdir)
  table = tables(config, variants)
  workdir.mkdir(parents=True, exist_ok=True)
  plot_gradient_norms(config, variants, workdir / "gradient_norms.png")
  results = {"config": dataclasses.asdict(config), "variants": variants}
  results["table"] = table
  sweeps.write_results(workdir, results, table=table, timings=seconds)
  return results


define_flags, main = _common.entry_points(Config, run, "depth_study")

if __name__ == "__main__":
  _common.launch(main, define_flags)
