r"""Depth, activations, residual paths and batch norm: vanishing gradients.

Seed 004 2(c): in deep networks the gradients of the lower layers shrink
as the depth L grows, also because saturated units (sigmoid, tanh at large
|z|) pass back `sigma'(z) ~ 0`; residual blocks (output F(x) + x) and
non-saturating activations (ReLU) are the remedies. This measures it.

For every activation (sigmoid, tanh, relu), with and without residual
connections, with and without batch norm, and every depth (number of
hidden layers, 2..32), a `DeepMLP` (or a `DeepCNN`, `--architecture=cnn`)
is trained on the embedded digits with `equivlab.train.train_step`
(momentum SGD; plain SGD-type steps show vanishing gradients as slow
learning, whereas Adam would rescale them away) for `--epochs` epochs, and
the experiment records

- the gradient norm `||dL/dW_l||` of every layer's kernel
  (`equivlab.probes.layer_gradient_norms`) on a fixed batch of training
  digits, at initialisation and after 1 epoch;
- the fraction of saturated hidden units (`act'(z) < 0.1 act'(0)`: the
  flat tails of sigmoid and tanh, the negative side of ReLU) and the mean
  slope act'(z) of the hidden units (the factor each layer multiplies the
  backpropagated signal by, besides its weights) at the same two points;
- the test accuracy after the fixed budget of epochs.

Writes to `--workdir`:
  results.json       every number above per variant, and the settings;
  depth_study.md     accuracy, gradient-ratio, saturation and slope
                     tables (Markdown);
  gradient_norms.png per-layer gradient norms, one panel per activation
                     and variant, one colour per depth, solid at init,
                     dashed after 1 epoch.

  python -m experiments.depth_study --workdir=/tmp/depth_study
  python -m experiments.depth_study --architecture=cnn --epochs=5 \
    --workdir=/tmp/depth_study_cnn
"""

import itertools
import json
import os
import time
from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import flags, logging

from equivlab import data, parallel, probes, viz
from equivlab import train as train_lib
from experiments import _launch

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
  "sigmoid": nn.sigmoid,
  "tanh": nn.tanh,
  "relu": nn.relu,
}
ARCHITECTURES = ("mlp", "cnn")
# The --residual and --batch_norm flags: which of (False, True) to run.
_SUBSETS = {"both": (False, True), "with": (True,), "without": (False,)}


def _check(activation: str, depth: int) -> None:
  if activation not in ACTIVATIONS:
    raise ValueError(
      f"activation must be one of {tuple(ACTIVATIONS)}, got {activation!r}."
    )
  if not isinstance(depth, int) or depth < 1:
    raise ValueError(f"depth must be an int >= 1, got {depth!r}.")


class DeepMLP(nn.Module):
  """`depth` hidden dense layers of one width, then dense logits.

  Hidden layer l computes `z_l = W_l h_{l-1} + b_l` (batch-normalised if
  `batch_norm`) and `h_l = act(z_l)`, or `h_l = h_{l-1} + act(z_l)` with
  `residual` (seed 004 2(c)'s F(x) + x; not for l = 0, which changes the
  width). Layers are named "layer_00", "layer_01", ..., the logits
  "output", so per-layer gradient norms sort in depth order.

  Attributes:
    depth: number of hidden layers (>= 1).
    width: their width.
    activation: "sigmoid", "tanh" or "relu".
    residual: skip connections around every hidden layer but the first.
    batch_norm: batch norm before every activation.
    num_classes: number of logits.
  """

  depth: int
  width: int = 128
  activation: str = "relu"
  residual: bool = False
  batch_norm: bool = False
  num_classes: int = 10

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    """Maps `[N, H, W, C]` (or `[N, D]`) inputs to logits `[N, K]`.

    Raises:
      ValueError: for an unknown activation or a depth below 1.
    """
    _check(self.activation, self.depth)
    act = ACTIVATIONS[self.activation]
    h = x.reshape(x.shape[0], -1)
    for layer in range(self.depth):
      z = nn.Dense(self.width, name=f"layer_{layer:02d}")(h)
      if self.batch_norm:
        z = nn.BatchNorm(
          use_running_average=not train, momentum=0.9, name=f"bn_{layer:02d}"
        )(z)
      h = h + act(z) if self.residual and layer > 0 else act(z)
    return nn.Dense(self.num_classes, name="output")(h)


class DeepCNN(nn.Module):
  """A stride-2 3x3 conv stem, `depth - 1` more 3x3 convs, GAP, logits.

  The same layer rule as `DeepMLP` on feature maps `[N, H/2, W/2, width]`
  ("SAME" padding), then a global average pool and dense logits.

  Attributes:
    depth: number of conv layers (>= 1), the stem included.
    width: their channels.
    activation: "sigmoid", "tanh" or "relu".
    residual: skip connections around every conv but the stem.
    batch_norm: batch norm before every activation.
    num_classes: number of logits.
  """

  depth: int
  width: int = 16
  activation: str = "relu"
  residual: bool = False
  batch_norm: bool = False
  num_classes: int = 10

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    """Maps `[N, H, W, C]` images to logits `[N, K]`.

    Raises:
      ValueError: for an unknown activation, a depth below 1, or inputs
        that are not rank 4.
    """
    _check(self.activation, self.depth)
    if x.ndim != 4:
      raise ValueError(f"DeepCNN expects [N, H, W, C], got shape {x.shape}.")
    act = ACTIVATIONS[self.activation]
    h = x
    for layer in range(self.depth):
      z = nn.Conv(
        self.width,
        (3, 3),
        strides=2 if layer == 0 else 1,
        name=f"layer_{layer:02d}",
      )(h)
      if self.batch_norm:
        z = nn.BatchNorm(
          use_running_average=not train, momentum=0.9, name=f"bn_{layer:02d}"
        )(z)
      h = h + act(z) if self.residual and layer > 0 else act(z)
    return nn.Dense(self.num_classes, name="output")(jnp.mean(h, axis=(1, 2)))


def make_model(
  architecture: str,
  depth: int,
  activation: str,
  *,
  residual: bool = False,
  batch_norm: bool = False,
  width: int | None = None,
) -> nn.Module:
  """The `DeepMLP` or `DeepCNN` of one variant.

  Args:
    architecture: "mlp" or "cnn".
    depth: hidden layers.
    activation: "sigmoid", "tanh" or "relu".
    residual: residual connections.
    batch_norm: batch norm.
    width: units (mlp, default 128) or channels (cnn, default 16).

  Returns:
    The module.

  Raises:
    ValueError: for an unknown architecture or activation, or a bad depth.
  """
  if architecture not in ARCHITECTURES:
    raise ValueError(
      f"architecture must be one of {ARCHITECTURES}, got {architecture!r}."
    )
  _check(activation, depth)
  cls = DeepMLP if architecture == "mlp" else DeepCNN
  kwargs = {} if width is None else {"width": width}
  return cls(
    depth=depth,
    activation=activation,
    residual=residual,
    batch_norm=batch_norm,
    **kwargs,
  )


def saturated_fraction(z: jax.Array, activation: str) -> jax.Array:
  """Fraction of pre-activations where `act'(z) < 0.1 act'(0)`.

  Args:
    z: pre-activations, any shape.
    activation: "sigmoid", "tanh" or "relu" (for ReLU: the fraction of
      z <= 0, the units that pass back no gradient).

  Returns:
    A float32 scalar in [0, 1].

  Raises:
    ValueError: for an unknown activation.
  """
  _check(activation, 1)
  if activation == "relu":
    return jnp.mean((z <= 0).astype(jnp.float32))
  fn = ACTIVATIONS[activation]
  slope = jax.vmap(jax.grad(fn))(jnp.ravel(z).astype(jnp.float32))
  return jnp.mean((slope < 0.1 * jax.grad(fn)(0.0)).astype(jnp.float32))


def _probe_fn(model: nn.Module, activation: str):
  """Jitted (variables, images, labels) -> (norms, saturation, slope)."""

  def probe(variables, images, labels):
    def loss_fn(params):
      logits, _ = model.apply(
        {**variables, "params": params},
        images,
        train=True,
        mutable=["batch_stats"],
      )
      return jnp.mean(
        optax.softmax_cross_entropy_with_integer_labels(logits, labels)
      )

    grads = jax.grad(loss_fn)(variables["params"])
    norms = probes.layer_gradient_norms(grads)
    found = probes.intermediates(
      model, variables, images, train=True, mutable=["batch_stats"]
    )
    prefix = "bn_" if model.batch_norm else "layer_"
    zs = [value for name, value in found.items() if name.startswith(prefix)]
    act = ACTIVATIONS[activation]
    saturation = jnp.mean(
      jnp.stack([saturated_fraction(z, activation) for z in zs])
    )
    slope = jnp.mean(
      jnp.stack([jnp.mean(jax.vmap(jax.grad(act))(jnp.ravel(z))) for z in zs])
    )
    return norms, saturation, slope

  return jax.jit(probe)


def run_variant(
  architecture: str,
  depth: int,
  activation: str,
  residual: bool,
  batch_norm: bool,
  data_arrays: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
  *,
  epochs: int,
  batch_size: int,
  learning_rate: float,
  probe_size: int,
  width: int | None,
  seed: int,
) -> dict:
  """Trains one variant; returns its gradient norms, saturation, accuracy.

  Args:
    architecture: "mlp" or "cnn".
    depth: hidden layers.
    activation: "sigmoid", "tanh" or "relu".
    residual: residual connections.
    batch_norm: batch norm.
    data_arrays: `(train_images, train_labels, test_images, test_labels)`.
    epochs: the fixed training budget (>= 1; the probe after epoch 1 is
      always taken).
    batch_size: training batch size.
    learning_rate: momentum-SGD step size.
    probe_size: training digits the gradient norms are measured on.
    width: layer width (None: the architecture's default).
    seed: seeds initialisation and shuffling.

  Returns:
    {"grad_norms_init", "grad_norms_epoch1": layer -> norm,
    "saturation_init", "saturation_epoch1", "mean_slope_init",
    "mean_slope_epoch1" (mean act'(z) over the hidden units), "test_accuracy",
    "train_loss" (mean over the last epoch), "seconds"}.
  """
  start = time.perf_counter()
  train_images, train_labels, test_images, test_labels = data_arrays
  model = make_model(
    architecture,
    depth,
    activation,
    residual=residual,
    batch_norm=batch_norm,
    width=width,
  )
  config = train_lib.TrainConfig(
    optimizer="momentum",
    learning_rate=learning_rate,
    batch_size=batch_size,
    seed=seed,
  )
  tx, _ = train_lib.make_optimizer(config, total_steps=1)
  init_key, state_key = jax.random.split(jax.random.key(seed))
  variables = jax.jit(lambda k, x: model.init(k, x, train=False))(
    init_key, jnp.asarray(train_images[:2])
  )
  state = train_lib.TrainState(
    step=jnp.zeros((), jnp.int32),
    params=variables["params"],
    batch_stats=variables.get("batch_stats", {}),
    opt_state=tx.init(variables["params"]),
    key=state_key,
    apply_fn=model.apply,
    tx=tx,
    spec=train_lib.StepSpec(),
  )
  probe = _probe_fn(model, activation)
  probe_images = jnp.asarray(train_images[:probe_size])
  probe_labels = jnp.asarray(train_labels[:probe_size])

  def measure(state):
    norms, saturation, slope = jax.device_get(
      probe(state.variables(), probe_images, probe_labels)
    )
    return (
      {k: float(v) for k, v in norms.items()},
      float(saturation),
      float(slope),
    )

  out = {}
  (
    out["grad_norms_init"],
    out["saturation_init"],
    out["mean_slope_init"],
  ) = measure(state)
  for epoch in range(epochs):
    losses = []
    for batch in data.iterate_batches(
      train_images, train_labels, batch_size, key=state_key, epoch=epoch
    ):
      state, metrics = train_lib.train_step(state, batch)
      losses.append(metrics["loss"])
    if epoch == 0:
      (
        out["grad_norms_epoch1"],
        out["saturation_epoch1"],
        out["mean_slope_epoch1"],
      ) = measure(state)
  out["train_loss"] = float(np.mean(jax.device_get(losses)))
  metrics = train_lib.evaluate(
    state,
    test_images,
    test_labels,
    batch_size=500,
    mesh=parallel.make_mesh(1),
  )
  out["test_accuracy"] = metrics["accuracy"]
  out["seconds"] = time.perf_counter() - start
  return out


def variant_name(activation: str, residual: bool, batch_norm: bool) -> str:
  """E.g. "relu+res+bn", "sigmoid" (plain)."""
  return (
    activation + ("+res" if residual else "") + ("+bn" if batch_norm else "")
  )


def run(
  workdir: str,
  *,
  architecture: str = "mlp",
  depths: Sequence[int] = (2, 4, 8, 16, 32),
  activations: Sequence[str] = ("sigmoid", "tanh", "relu"),
  residuals: Sequence[bool] = (False, True),
  batch_norms: Sequence[bool] = (False, True),
  epochs: int = 3,
  batch_size: int = 128,
  learning_rate: float = 0.05,
  probe_size: int = 512,
  width: int | None = None,
  train_limit: int | None = None,
  test_limit: int | None = None,
  seed: int = 0,
) -> dict:
  """Trains every variant and depth; writes the tables and the plot.

  Args:
    workdir: output directory.
    architecture: "mlp" or "cnn".
    depths: numbers of hidden layers.
    activations: subset of "sigmoid", "tanh", "relu".
    residuals: which of (False, True) to run.
    batch_norms: which of (False, True) to run.
    epochs: training budget per variant (>= 1).
    batch_size: training batch size.
    learning_rate: momentum-SGD step size (momentum 0.9).
    probe_size: training digits the gradient norms are measured on.
    width: layer width (None: 128 units for mlp, 16 channels for cnn).
    train_limit: use only the first N training digits.
    test_limit: use only the first N test digits.
    seed: seeds initialisation and shuffling.

  Returns:
    The results (also in `workdir/results.json`).

  Raises:
    ValueError: for an unknown architecture or activation, a depth below
      1, `epochs` below 1, or an empty grid.
  """
  if architecture not in ARCHITECTURES:
    raise ValueError(
      f"architecture must be one of {ARCHITECTURES}, got {architecture!r}."
    )
  for activation in activations:
    _check(activation, 1)
  for depth in depths:
    _check("relu", depth)
  if epochs < 1:
    raise ValueError(f"epochs must be >= 1, got {epochs}.")
  if not (depths and activations and residuals and batch_norms):
    raise ValueError(
      "depths, activations, residuals and batch_norms must "
      "each hold at least one value."
    )
  train_images, train_labels = data.embedded_digits("train")
  test_images, test_labels = data.embedded_digits("test")
  arrays = (
    train_images[:train_limit],
    train_labels[:train_limit],
    test_images[:test_limit],
    test_labels[:test_limit],
  )
  results = {
    "settings": {
      "architecture": architecture,
      "depths": list(depths),
      "epochs": epochs,
      "batch_size": batch_size,
      "optimizer": "momentum SGD (0.9)",
      "learning_rate": learning_rate,
      "probe_size": probe_size,
      "width": width,
      "init": "flax default (LeCun normal kernels, zero biases)",
      "seed": seed,
    },
    "variants": {},
  }
  grid = list(itertools.product(activations, residuals, batch_norms))
  for activation, residual, batch_norm in grid:
    name = variant_name(activation, residual, batch_norm)
    results["variants"][name] = {}
    for depth in depths:
      entry = run_variant(
        architecture,
        depth,
        activation,
        residual,
        batch_norm,
        arrays,
        epochs=epochs,
        batch_size=batch_size,
        learning_rate=learning_rate,
        probe_size=probe_size,
        width=width,
        seed=seed,
      )
      results["variants"][name][str(depth)] = entry
      os.makedirs(workdir, exist_ok=True)
      with open(os.path.join(workdir, "results.json"), "w") as f:
        json.dump(results, f, indent=2)  # Rewritten as each run ends.
      logging.info(
        "%s depth %d: test accuracy %.4f (%.1fs)",
        name,
        depth,
        entry["test_accuracy"],
        entry["seconds"],
      )
  os.makedirs(workdir, exist_ok=True)
  text = tables(results)
  with open(os.path.join(workdir, "results.json"), "w") as f:
    json.dump(results, f, indent=2)
  with open(os.path.join(workdir, "depth_study.md"), "w") as f:
    f.write(text + "\n")
  plot_gradient_norms(results, os.path.join(workdir, "gradient_norms.png"))
  print(text)
  return results


def _first_last_ratio(norms: dict[str, float]) -> float:
  # Layer 0's kernel has the input's size ([784, width] in the MLP), the
  # others [width, width] (or [3, 3, width, width]): compare
  # layer 1 with the last hidden layer (1.0 when the depth is 2).
  hidden = [v for k, v in norms.items() if k.startswith("layer_")]
  return hidden[min(1, len(hidden) - 1)] / max(hidden[-1], 1e-30)


def tables(results: dict) -> str:
  """The accuracy, gradient-ratio, saturation and slope tables (Markdown).

  Args:
    results: as returned by `run`.

  Returns:
    Four Markdown tables with a line of explanation each.
  """
  depths = results["settings"]["depths"]
  acc, ratio, sat, slope = [], [], [], []
  for name, by_depth in results["variants"].items():
    acc.append(
      {"variant": name}
      | {f"L={d}": by_depth[str(d)]["test_accuracy"] for d in depths}
    )
    ratio.append(
      {"variant": name}
      | {
        f"L={d}": "{:.2e} / {:.2e}".format(
          _first_last_ratio(by_depth[str(d)]["grad_norms_init"]),
          _first_last_ratio(by_depth[str(d)]["grad_norms_epoch1"]),
        )
        for d in depths
      }
    )
    sat.append(
      {"variant": name}
      | {
        f"L={d}": "{:.2f} / {:.2f}".format(
          by_depth[str(d)]["saturation_init"],
          by_depth[str(d)]["saturation_epoch1"],
        )
        for d in depths
      }
    )
    slope.append(
      {"variant": name}
      | {
        f"L={d}": "{:.3f} / {:.3f}".format(
          by_depth[str(d)]["mean_slope_init"],
          by_depth[str(d)]["mean_slope_epoch1"],
        )
        for d in depths
      }
    )
  epochs = results["settings"]["epochs"]
  return "\n\n".join(
    [
      f"Test accuracy after {epochs} epochs (L = hidden layers):",
      viz.format_table(acc),
      "||dL/dW_2|| / ||dL/dW_L|| (second over last hidden layer; the first "
      "layer's input has another size), at init / after 1 epoch:",
      viz.format_table(ratio),
      "Fraction of saturated hidden units (act'(z) < 0.1 act'(0)), at init "
      "/ after 1 epoch:",
      viz.format_table(sat),
      "Mean activation slope act'(z) over hidden units, at init / after 1 "
      "epoch:",
      viz.format_table(slope),
    ]
  )


def plot_gradient_norms(results: dict, path: str) -> str:
  """Per-layer gradient norms: one panel per variant, one colour per depth.

  Args:
    results: as returned by `run`.
    path: where the PNG goes.

  Returns:
    `path`.
  """
  from matplotlib.figure import Figure  # noqa: PLC0415 (slow import)

  names = list(results["variants"])
  ncols = min(4, len(names))
  nrows = -(-len(names) // ncols)
  fig = Figure(figsize=(3.6 * ncols, 2.9 * nrows))
  axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel()
  depths = results["settings"]["depths"]
  for ax, name in zip(axes, names, strict=False):
    for i, depth in enumerate(depths):
      entry = results["variants"][name][str(depth)]
      for key, style in (("grad_norms_init", "-"), ("grad_norms_epoch1", "--")):
        norms = [
          max(v, 1e-30) for k, v in entry[key].items() if k.startswith("layer_")
        ]
        ax.semilogy(
          range(1, len(norms) + 1),
          norms,
          style,
          color=f"C{i}",
          label=f"L={depth}" if style == "-" else None,
        )
    ax.set_title(name, fontsize=9)
    ax.set_xlabel("hidden layer l", fontsize=8)
    ax.set_ylabel("||dL/dW_l||", fontsize=8)
    ax.grid(alpha=0.3)
  for ax in axes[len(names) :]:
    ax.set_visible(False)
  axes[0].legend(fontsize=7, title="solid: init, dashed: 1 epoch")
  fig.suptitle(
    f"Per-layer gradient norms ({results['settings']['architecture']}), "
    "seed 004 2(c)",
    fontsize=10,
  )
  fig.tight_layout()
  fig.savefig(path, dpi=90)
  return path


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
      "/tmp/depth_study",
      "Directory for results.json, depth_study.md and gradient_norms.png.",
      flag_values=flag_values,
    ),
    flags.DEFINE_enum(
      "architecture",
      "mlp",
      list(ARCHITECTURES),
      "DeepMLP (dense layers) or DeepCNN (3x3 convs, GAP head).",
      flag_values=flag_values,
    ),
    flags.DEFINE_list(
      "depths",
      ["2", "4", "8", "16", "32"],
      "Numbers of hidden layers, comma-separated.",
      flag_values=flag_values,
    ),
    flags.DEFINE_list(
      "activations",
      list(ACTIVATIONS),
      "Activations to compare (sigmoid, tanh, relu).",
      flag_values=flag_values,
    ),
    flags.DEFINE_enum(
      "residual",
      "both",
      list(_SUBSETS),
      "Run the variants with residual connections, without, or both.",
      flag_values=flag_values,
    ),
    flags.DEFINE_enum(
      "batch_norm",
      "both",
      list(_SUBSETS),
      "Run the variants with batch norm, without, or both.",
      flag_values=flag_values,
    ),
    flags.DEFINE_integer(
      "epochs",
      3,
      "Training budget per variant, in epochs (>= 1).",
      flag_values=flag_values,
    ),
    flags.DEFINE_integer(
      "batch_size", 128, "Training batch size.", flag_values=flag_values
    ),
    flags.DEFINE_float(
      "learning_rate",
      0.05,
      "Step size of momentum SGD (momentum 0.9).",
      flag_values=flag_values,
    ),
    flags.DEFINE_integer(
      "width",
      None,
      "Units (mlp) or channels (cnn) per layer; default 128 / 16.",
      flag_values=flag_values,
    ),
    flags.DEFINE_integer(
      "seed", 0, "Seed of init and shuffling.", flag_values=flag_values
    ),
  ]
  return {holder.name: holder for holder in holders}


def main(argv, holders: dict) -> None:
  """Reads the flags and runs the study."""
  del argv
  value = {name: holder.value for name, holder in holders.items()}
  run(
    value["workdir"],
    architecture=value["architecture"],
    depths=[int(d) for d in value["depths"]],
    activations=value["activations"],
    residuals=_SUBSETS[value["residual"]],
    batch_norms=_SUBSETS[value["batch_norm"]],
    epochs=value["epochs"],
    batch_size=value["batch_size"],
    learning_rate=value["learning_rate"],
    width=value["width"],
    seed=value["seed"],
  )


if __name__ == "__main__":
  _launch.run(main, define_flags)
