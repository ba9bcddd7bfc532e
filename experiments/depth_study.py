r"""Depth, activations, residual paths and batch norm: vanishing gradients.

Seed 004 2(c): in deep networks the gradients of the lower layers shrink
as the depth L grows, also because saturated units (sigmoid, tanh at large
|z|) pass back `act'(z) ~ 0`; residual blocks (output F(x) + x) and
non-saturating activations (ReLU) are the remedies. This measures it.

The grid: every activation (sigmoid, tanh, relu), with and without
residual connections, with and without batch norm, and every depth L
(hidden layers, 2..32) of `equivlab.nn.models.DeepMLP` (model "deep_mlp") or
`DeepCNN` ("deep_cnn", `--architecture=cnn`). Each variant trains through
`equivlab.train.train_and_evaluate` with momentum SGD at a constant
learning rate (plain SGD-type steps show vanishing gradients as slow
learning, whereas Adam would rescale them away), and
`equivlab.analysis.probes.make_probe` measures on a fixed batch of training
digits

- the gradient norm `||dL/dW_l||` of every layer's kernel;
- the fraction of saturated hidden units (`act'(z) < 0.1 act'(0+)`) and
  the mean slope act'(z) of the hidden units (the factor each layer
  multiplies the backpropagated signal by, besides its weights);

at initialisation and after 1 epoch, and the test accuracy after
`--num_epochs` epochs. The state after 1 epoch is that of a 1-epoch run of
the same config in its own workdir: with a constant learning rate
everything a step depends on (initialisation, batch order, the optimizer)
is the same in a 1-epoch and a longer run, so that run's state is the
longer run's after its first epoch (`tests/depth_study_test.py` checks
this bitwise against the longer run's epoch-1 checkpoint, and every study
records whether the two runs' epoch-1 metrics agree). The state at
initialisation is the engine's own: `train.create_train_state` with the
key `train_and_evaluate` derives from the seed (also checked by a test).
A run whose loss becomes non-finite is recorded as diverged.

    python -m experiments.depth_study
    python -m experiments.depth_study --architecture=cnn --num_epochs=5 \
      --workdir=runs/depth_study_cnn

Writes into --workdir (default runs/depth_study): results.json (every
number above per variant and depth, the config), results.md (the
accuracy, gradient-ratio, saturation and slope tables), timings.json,
gradient_norms.png (per-layer gradient norms, one panel per variant, one
colour per depth, solid at initialisation, dashed after 1 epoch), and the
train workdirs under runs/<variant>/L<depth>/epochs<n> (a rerun resumes).
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
    num_epochs: training epochs per variant (the probe after epoch 1 is
      always taken).
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
    _common.check_config(self)
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
    for name in ("num_epochs", "batch_size", "probe_size"):
      checks.check_int(name, getattr(self, name), minimum=1)
    for name in ("width", "train_limit", "test_limit"):
      checks.check_int(name, getattr(self, name), minimum=1, allow_none=True)
    checks.check_int("seed", self.seed, minimum=0)
    checks.check_number(
      "learning_rate", self.learning_rate, minimum=0, strict_minimum=True
    )


def variant_name(activation: str, residual: bool, batch_norm: bool) -> str:
  """E.g. "relu+res+bn", "sigmoid" (plain)."""
  return (
    activation + ("+res" if residual else "") + ("+bn" if batch_norm else "")
  )


def grid(config: Config) -> dict[str, dict[str, Any]]:
  """Variant name -> the model's keyword arguments but the depth."""
  variants = {}
  for activation, residual, batch_norm in itertools.product(
    config.activations, SUBSETS[config.residual], SUBSETS[config.batch_norm]
  ):
    kwargs = {
      "activation": activation,
      "residual": residual,
      "batch_norm": batch_norm,
    }
    if config.width is not None:
      kwargs["width"] = config.width
    variants[variant_name(activation, residual, batch_norm)] = kwargs
  return variants


def train_config(
  config: Config, model_kwargs: dict[str, Any], num_classes: int
) -> train.TrainConfig:
  """The `TrainConfig` of one variant and depth (`model_kwargs` with it)."""
  return train.TrainConfig(
    model=ARCHITECTURES[config.architecture],
    model_kwargs=model_kwargs,
    num_classes=num_classes,
    num_epochs=config.num_epochs,
    batch_size=config.batch_size,
    optimizer="momentum",
    momentum=0.9,
    learning_rate=config.learning_rate,
    # Constant: the 1-epoch run is then the first epoch of the longer one.
    schedule="constant",
    seed=config.seed,
    train_limit=config.train_limit,
    test_limit=config.test_limit,
    **config.train_options(),
  )


def initial_variables(
  config: train.TrainConfig, sample: np.ndarray
) -> dict[str, Any]:
  """The variables `train_and_evaluate(config, ...)` starts from.

  The engine initialises with the first half of `PRNGKey(config.seed)`'s
  split on two training images; the parameters depend on their shape only.
  """
  init_key, _ = jax.random.split(jax.random.PRNGKey(config.seed))
  state = train.create_train_state(init_key, config, sample[:2])
  return state.variables()


def _probe_batch(config: Config) -> tuple[np.ndarray, np.ndarray, int]:
  """The first `probe_size` training digits, and the number of classes."""
  images, labels = data.load_dataset(
    config.dataset,
    "train",
    data_dir=config.data_dir,
    download=config.download,
  )
  images, labels = images[: config.train_limit], labels[: config.train_limit]
  size = config.probe_size
  return images[:size], labels[:size], int(labels.max()) + 1


def _train(config: train.TrainConfig, workdir: pathlib.Path):
  """A `TrainResult`, or the reason the run stopped if its loss blew up."""
  try:
    return train.train_and_evaluate(config, workdir)
  except FloatingPointError as error:
    logging.warning("%s diverged: %s", workdir, error)
    return str(error).split(";")[0]  # "non-finite loss nan at step 37"


def _probe_values(probe, variables, images, labels) -> dict[str, Any]:
  found = jax.device_get(probe(variables, images, labels))
  return {
    "grad_norms": {k: float(v) for k, v in found["grad_norms"].items()},
    "saturation": float(np.mean(list(found["saturation"].values()))),
    "mean_slope": float(np.mean(list(found["mean_slope"].values()))),
    "layer_saturation": {k: float(v) for k, v in found["saturation"].items()},
  }


def measure_variant(
  base: train.TrainConfig,
  run_dir: pathlib.Path,
  probe_images: np.ndarray,
  probe_labels: np.ndarray,
) -> dict[str, Any]:
  """Probes one variant at init and after 1 epoch, trains it, tests it.

  Args:
    base: the variant's full-length `TrainConfig`.
    run_dir: its directory; the 1-epoch and the full run go to
      `epochs1` and `epochs<num_epochs>` under it (the same one when
      `num_epochs` is 1).
    probe_images: the probe batch `[P, H, W, C]`.
    probe_labels: its labels `[P]`.

  Returns:
    {"init", "epoch1": `_probe_values` (None if the run diverged in its
    first epoch), "test_accuracy", "train_loss" (mean over the last
    epoch; None if diverged), "diverged" (None, or where the loss became
    non-finite), "epoch1_matches_full_run" (the 1-epoch run's epoch-1
    metrics equal the full run's, bitwise)}.
  """
  model = train.build_model(base)
  probe = probes.make_probe(model)
  init = initial_variables(base, probe_images)
  entry = {"init": _probe_values(probe, init, probe_images, probe_labels)}
  one = dataclasses.replace(base, num_epochs=1)
  first = _train(one, run_dir / "epochs1")
  full = first
  if base.num_epochs > 1:
    full = _train(base, run_dir / f"epochs{base.num_epochs}")
  entry["epoch1"] = None
  if not isinstance(first, str):
    entry["epoch1"] = _probe_values(
      probe, first.variables, probe_images, probe_labels
    )
  diverged = isinstance(full, str)
  entry["diverged"] = full if diverged else None
  entry["test_accuracy"] = None if diverged else full["test_accuracy"]
  entry["train_loss"] = None if diverged else full["train_loss"]
  entry["epoch1_matches_full_run"] = (
    None
    if diverged or isinstance(first, str)
    else first.history[0] == full.history[0]
  )
  if entry["epoch1_matches_full_run"] is False:
    logging.warning("%s: the 1-epoch run left the full run's path", run_dir)
  return entry


def _measure(config: Config, workdir: pathlib.Path):
  """Every variant and depth: (variant -> depth -> entry, seconds)."""
  images, labels, num_classes = _probe_batch(config)
  variants, seconds = {}, {}
  for name, kwargs in grid(config).items():
    for depth in config.depths:
      base = train_config(config, {**kwargs, "depth": depth}, num_classes)
      start = time.perf_counter()
      entry = measure_variant(
        base, workdir / "runs" / name / f"L{depth}", images, labels
      )
      variants.setdefault(name, {})[str(depth)] = entry
      seconds[f"{name} L={depth}"] = time.perf_counter() - start
      logging.info(
        "%s L=%d: test accuracy %s (%.0f s)",
        name,
        depth,
        entry["test_accuracy"],
        seconds[f"{name} L={depth}"],
      )
  return variants, seconds


def gradient_ratio(grad_norms: dict[str, float]) -> float:
  """`||dL/dW_2|| / ||dL/dW_L||`: hidden layer 2 over hidden layer L.

  Layers count from 1 (layer_00 is layer 1). Layer 1's kernel has the
  input's size ([784, width] in the MLP), the others [width, width] (or
  [3, 3, width, width]), so layer 2 is the lowest comparable one; at L = 2
  the ratio is 1. A last layer whose gradient is exactly 0 gives inf.
  """
  hidden = [v for k, v in grad_norms.items() if k.startswith("layer_")]
  low, last = hidden[min(1, len(hidden) - 1)], hidden[-1]
  return low / last if last > 0 else float("inf")


def _pair(entry: dict[str, Any], read, fmt: str) -> str:
  """One probe value as "at init / after epoch 1" ("-": diverged)."""
  values = [
    "-" if entry[when] is None else fmt.format(read(entry[when]))
    for when in ("init", "epoch1")
  ]
  return " / ".join(values)


def _accuracy(entry: dict[str, Any]) -> str:
  if entry["diverged"] is not None:
    return "diverged"
  return f"{entry['test_accuracy']:.3f}"


def tables(config: Config, variants: dict[str, dict[str, Any]]) -> str:
  """The accuracy, gradient-ratio, saturation and slope tables (Markdown)."""
  kinds = {
    "accuracy": _accuracy,
    "ratio": lambda e: _pair(
      e, lambda p: gradient_ratio(p["grad_norms"]), "{:.2e}"
    ),
    "saturation": lambda e: _pair(e, lambda p: p["saturation"], "{:.2f}"),
    "slope": lambda e: _pair(e, lambda p: p["mean_slope"], "{:.3f}"),
  }
  rows = {kind: [] for kind in kinds}
  for name, by_depth in variants.items():
    for kind, cell in kinds.items():
      rows[kind].append(
        {"variant": name}
        | {f"L={d}": cell(by_depth[str(d)]) for d in config.depths}
      )
  return "\n\n".join(
    [
      f"Test accuracy after {config.num_epochs} epochs (L = hidden layers; "
      f"{config.architecture}):",
      format_table(rows["accuracy"]),
      "||dL/dW_2|| / ||dL/dW_L|| (hidden layer 2 over hidden layer L, "
      "counting from 1; layer 1's input has another size), at init / "
      "after 1 epoch:",
      format_table(rows["ratio"]),
      "Fraction of saturated hidden units (act'(z) < 0.1 act'(0+)), at "
      "init / after 1 epoch:",
      format_table(rows["saturation"]),
      "Mean activation slope act'(z) over hidden units, at init / after 1 "
      "epoch:",
      format_table(rows["slope"]),
    ]
  )


def plot_gradient_norms(
  config: Config, variants: dict[str, dict[str, Any]], path: pathlib.Path
) -> None:
  """Per-layer gradient norms: one panel per variant, one colour per depth."""
  from matplotlib.figure import Figure  # noqa: PLC0415 (slow import)

  names = list(variants)
  ncols = min(4, len(names))
  nrows = -(-len(names) // ncols)
  fig = Figure(figsize=(3.6 * ncols, 2.9 * nrows))
  axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel()
  for ax, name in zip(axes, names, strict=False):
    for i, depth in enumerate(config.depths):
      entry = variants[name][str(depth)]
      for when, style in (("init", "-"), ("epoch1", "--")):
        if entry[when] is None:
          continue
        norms = [
          max(v, 1e-30)
          for k, v in entry[when]["grad_norms"].items()
          if k.startswith("layer_")
        ]
        ax.semilogy(
          range(1, len(norms) + 1),
          norms,
          style,
          color=f"C{i}",
          label=f"L={depth}" if style == "-" else None,
        )
    ax.set_title(name, fontsize=9)
    ax.set_xlabel("hidden layer l (from 1)", fontsize=8)
    ax.set_ylabel("||dL/dW_l||", fontsize=8)
    ax.grid(alpha=0.3)
  for ax in axes[len(names) :]:
    ax.set_visible(False)
  axes[0].legend(fontsize=7, title="solid: init, dashed: 1 epoch")
  fig.suptitle(
    f"Per-layer gradient norms ({config.architecture}), seed 004 2(c)",
    fontsize=10,
  )
  fig.tight_layout()
  fig.savefig(path, dpi=90)


def run(config: Config, workdir: str | pathlib.Path) -> dict[str, Any]:
  """Trains and probes every variant and depth; writes tables and a plot.

  Args:
    config: the study's settings.
    workdir: where results.json, results.md, gradient_norms.png and the
      train workdirs go.

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
  results = {
    "config": dataclasses.asdict(config),
    "variants": variants,
    "table": table,
  }
  _common.write_results(workdir, results, table=table, timings=seconds)
  return results


define_flags, main = _common.entry_points(Config, run, "depth_study")

if __name__ == "__main__":
  _common.launch(main, define_flags)
