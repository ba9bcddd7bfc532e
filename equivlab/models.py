"""Classifiers for the digit experiments: MLP, CNNs, Z2CNN and the G-CNNs.

Every model maps images `[N, H, W, C]` to logits `[N, num_classes]` and is
called as `model.apply(variables, x, train=..., rngs=...)`; models with batch
norm keep their statistics in the "batch_stats" collection and models with
dropout draw from a "dropout" rng when `train=True`.

- "mlp": a multilayer perceptron on the flattened pixels (seed 003's MLP).
- "cnn": seed 003's convolutional model, conv blocks and a dense head.
- "cnn_gap": a CNN with a global-average-pooling head and no striding:
  four 3x3 convolutions with circular padding and dilations 1, 2, 4, 8 (a
  31-pixel receptive field) and batch norm, so every layer commutes with
  circular shifts
  and the average over space is exactly invariant to them (zero-filled
  shifts of a digit that stays inside the frame are circular shifts).
- "z2cnn": Cohen & Welling 2016 (section 8.1, Table 1): 7 layers of 3x3
  convolutions (4x4 in the last), 20 channels, ReLU, batch norm, a 2x2 max
  pool after layer 2; 21,750 parameters.
- "p4cnn", "p4cnn_rotpool", "p4mcnn": `equivlab.layers.P4CNN`, the same
  network with p4 (or p4m) group convolutions, with or without rotation
  pooling after every layer.
- "p4cnn_gap": `equivlab.layers.P4GapCNN`, "cnn_gap" made of p4 group
  convolutions: invariant to circular shifts and to rot90 at once.
"""

import functools
import math
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from equivlab import checks

MODEL_NAMES = (
  "mlp",
  "cnn",
  "cnn_gap",
  "z2cnn",
  "p4cnn",
  "p4cnn_rotpool",
  "p4mcnn",
  "p4cnn_gap",
)
NORMS = (None, "batch", "layer", "group", "instance")
KERNEL_INITS = ("lecun", "he", "xavier", "normal")


def kernel_initializer(name: str) -> Callable[..., jax.Array]:
  """The weight initialiser called `name`.

  Args:
    name: "lecun" (LeCun normal, flax's default), "he" (He normal, for
      ReLU), "xavier" (Glorot uniform) or "normal" (N(0, 0.01^2)).

  Returns:
    A `jax.nn.initializers` initialiser.

  Raises:
    ValueError: if `name` is unknown.
  """
  inits = {
    "lecun": nn.initializers.lecun_normal(),
    "he": nn.initializers.he_normal(),
    "xavier": nn.initializers.xavier_uniform(),
    "normal": nn.initializers.normal(stddev=0.01),
  }
  if name not in inits:
    raise ValueError(
      f"kernel_init must be one of {KERNEL_INITS}, got {name!r}."
    )
  return inits[name]


def _check_norm(norm: str | None) -> None:
  if norm not in NORMS:
    raise ValueError(f"norm must be one of {NORMS}, got {norm!r}.")


def _check_images(x: jax.Array, name: str, min_size: int = 1) -> None:
  if x.ndim != 4:
    raise ValueError(
      f"{name} expects images [N, H, W, C] (rank 4), got shape {x.shape}."
    )
  if x.shape[1] < min_size or x.shape[2] < min_size:
    raise ValueError(
      f"{name} needs images of at least {min_size}x{min_size} pixels, got "
      f"{x.shape[1]}x{x.shape[2]} (shape {x.shape})."
    )


def _normalize(x: jax.Array, norm: str | None, train: bool) -> jax.Array:
  """Applies the normalisation called `norm` over the channel axis."""
  if norm is None:
    return x
  if norm == "batch":
    return nn.BatchNorm(use_running_average=not train, momentum=0.9)(x)
  if norm == "layer":
    return nn.LayerNorm()(x)
  if norm == "group":
    return nn.GroupNorm(num_groups=math.gcd(x.shape[-1], 8))(x)
  return nn.InstanceNorm()(x)


class MLP(nn.Module):
  """A multilayer perceptron on flattened images (seed 003's MLP).

  Attributes:
    num_classes: number of logits.
    hidden_sizes: widths of the ReLU hidden layers.
    dropout_rate: dropout after every hidden layer when training.
  """

  num_classes: int = 10
  hidden_sizes: Sequence[int] = (256, 256)
  dropout_rate: float = 0.0

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    """Maps `[N, H, W, C]` images to logits `[N, num_classes]`."""
    _check_images(x, "MLP")
    x = x.reshape(x.shape[0], -1)
    for width in self.hidden_sizes:
      x = nn.relu(nn.Dense(width)(x))
      x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    return nn.Dense(self.num_classes)(x)


class CNN(nn.Module):
  """Convolutional blocks and a dense or global-average-pooling head.

  Each block is a 3x3 convolution (padding `padding`, dilation from
  `dilations`), the normalisation `norm`, ReLU and, if `pool`, a 2x2 max
  pool. The "dense" head (seed 003's convolutional model) flattens the last
  feature map into a hidden dense layer, so its output depends on WHERE
  features are; the "gap" head averages the last feature map over space
  first, so a shift of the digit only moves what gets averaged (exactly
  invariant to circular shifts with `padding="CIRCULAR"` and no pooling).

  Attributes:
    num_classes: number of logits.
    features: channels of the convolutional blocks.
    head: "dense" or "gap".
    pool: a 2x2, stride-2 max pool after every block.
    padding: padding of the convolutions: "SAME", "CIRCULAR", "VALID".
    dilations: kernel dilation per block (None: all 1).
    dense_features: width of the hidden dense layer of the "dense" head.
    norm: None, "batch", "layer", "group" (gcd(C, 8) groups) or "instance".
    dropout_rate: dropout before the last dense layer when training.
    kernel_init: "lecun", "he", "xavier" or "normal" (see
      `kernel_initializer`), for every convolution and dense layer.
  """

  num_classes: int = 10
  features: Sequence[int] = (32, 64)
  head: str = "dense"
  pool: bool = True
  padding: str = "SAME"
  dilations: Sequence[int] | None = None
  dense_features: int = 128
  norm: str | None = None
  dropout_rate: float = 0.0
  kernel_init: str = "lecun"

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    """Maps `[N, H, W, C]` images to logits `[N, num_classes]`.

    Raises:
      ValueError: for a bad head, norm, kernel_init, or images that are not
        rank 4 or smaller than 2**len(features) pixels a side.
    """
    if self.head not in ("dense", "gap"):
      raise ValueError(f"head must be 'dense' or 'gap', got {self.head!r}.")
    _check_norm(self.norm)
    init = kernel_initializer(self.kernel_init)
    dilations = self.dilations or (1,) * len(self.features)
    if len(dilations) != len(self.features):
      raise ValueError(
        f"dilations must have one entry per block ({len(self.features)}), "
        f"got {dilations}."
      )
    min_size = 2 ** len(self.features) if self.pool else 1
    _check_images(x, "CNN", min_size=min_size)
    for width, dilation in zip(self.features, dilations, strict=True):
      x = nn.Conv(
        width,
        (3, 3),
        padding=self.padding,
        kernel_dilation=dilation,
        kernel_init=init,
      )(x)
      x = nn.relu(_normalize(x, self.norm, train))
      if self.pool:
        x = nn.max_pool(x, (2, 2), strides=(2, 2))
    if self.head == "gap":
      x = jnp.mean(x, axis=(1, 2))
    else:
      x = x.reshape(x.shape[0], -1)
      x = nn.relu(nn.Dense(self.dense_features, kernel_init=init)(x))
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    return nn.Dense(self.num_classes, kernel_init=init)(x)


class Z2CNN(nn.Module):
  """Cohen & Welling 2016's Z2CNN baseline for rotated MNIST (Table 1).

  Seven "VALID" convolutions: six 3x3 with `features` channels, each followed
  by batch norm and ReLU (a 2x2 max pool after layer 2), and a last 4x4
  convolution to `num_classes` channels. On 28x28 inputs the last map is 1x1
  (28-26-24-12-10-8-6-4-1); larger inputs are averaged over space.

  Attributes:
    num_classes: number of logits.
    features: channels of the hidden layers (20 in the paper).
    dropout_rate: dropout after every hidden layer when training.
  """

  num_classes: int = 10
  features: int = 20
  dropout_rate: float = 0.0

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    """Maps `[N, H, W, C]` images (H, W >= 28) to logits `[N, num_classes]`.

    Raises:
      ValueError: for images that are not rank 4 or smaller than 28x28.
    """
    _check_images(x, "Z2CNN", min_size=28)
    for layer in range(6):
      x = nn.Conv(self.features, (3, 3), padding="VALID")(x)
      x = nn.BatchNorm(use_running_average=not train, momentum=0.9)(x)
      x = nn.relu(x)
      x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
      if layer == 1:
        x = nn.max_pool(x, (2, 2), strides=(2, 2))
    x = nn.Conv(self.num_classes, (4, 4), padding="VALID")(x)
    return jnp.mean(x, axis=(1, 2))


def get_model(name: str, *, num_classes: int = 10, **kwargs: Any) -> nn.Module:
  """The model called `name`, configured by keyword arguments.

  Args:
    name: one of `MODEL_NAMES`.
    num_classes: number of logits.
    **kwargs: attributes of the model class (e.g. `norm="batch"` for "cnn",
      `features=12` for "p4cnn"); defaults give the paper's sizes: "p4cnn"
      and "p4cnn_rotpool" use 10 G-channels, "p4mcnn" 7 (about the same
      parameter count, since a p4m channel holds 8 orientations, not 4).

  Returns:
    A flax linen module mapping `[N, H, W, C]` to `[N, num_classes]`.

  Raises:
    ValueError: if `name` is unknown.
  """
  if name == "mlp":
    return MLP(num_classes=num_classes, **kwargs)
  if name == "cnn":
    return CNN(num_classes=num_classes, **kwargs)
  if name == "cnn_gap":
    kwargs = {
      "features": (16, 32, 32, 32),
      "dilations": (1, 2, 4, 8),
      "pool": False,
      "padding": "CIRCULAR",
      "norm": "batch",
      **kwargs,
    }
    return CNN(num_classes=num_classes, head="gap", **kwargs)
  if name == "z2cnn":
    return Z2CNN(num_classes=num_classes, **kwargs)
  if name in ("p4cnn", "p4cnn_rotpool", "p4mcnn"):
    from equivlab import layers  # noqa: PLC0415 (engineer G's module)

    defaults = {
      "p4cnn": {"features": 10, "group": "p4", "rotation_pooling": False},
      "p4cnn_rotpool": {
        "features": 10,
        "group": "p4",
        "rotation_pooling": True,
      },
      "p4mcnn": {"features": 7, "group": "p4m", "rotation_pooling": False},
    }[name]
    return layers.P4CNN(num_classes=num_classes, **{**defaults, **kwargs})
  if name == "p4cnn_gap":
    from equivlab import layers  # noqa: PLC0415 (engineer G's module)

    return layers.P4GapCNN(num_classes=num_classes, **kwargs)
  raise ValueError(f"model must be one of {MODEL_NAMES}, got {name!r}.")


def count_params(variables: Any) -> int:
  """Number of trainable parameters in `variables["params"]` (or a tree)."""
  tree = (
    variables.get("params", variables)
    if hasattr(variables, "get")
    else variables
  )
  return int(sum(x.size for x in jax.tree_util.tree_leaves(tree)))


def init_model(
  key: jax.Array, model: nn.Module, image_shape: Sequence[int] = (28, 28, 1)
) -> dict[str, Any]:
  """Initialises `model` on a batch of two zero images of `image_shape`.

  Args:
    key: PRNG key for the parameters.
    model: a module from `get_model`.
    image_shape: `[H, W, C]` of one image.

  Returns:
    The variables (a dict with "params" and possibly "batch_stats").
  """
  x = jnp.zeros((2, *image_shape), jnp.float32)
  return dict(model.init(key, x, train=False))


@functools.partial(jax.jit, static_argnums=0)
def _apply_eval(model: nn.Module, variables: Any, x: jax.Array) -> jax.Array:
  # Modules hash by their attributes: one compilation per model and shape.
  return model.apply(variables, x, train=False)


def apply_in_batches(
  model: nn.Module,
  variables: Any,
  images: Any,
  *,
  batch_size: int = 500,
) -> jax.Array:
  """Evaluation-mode logits of `model` on many images, a batch at a time.

  Every call sees a batch of the same size (the last one is padded with
  zeros and its padding dropped), so the model compiles once per image
  size however many images there are.

  Args:
    model: a flax module taking `(x, train=False)`.
    variables: its variables ({"params": ..., "batch_stats": ...}).
    images: `[N, H, W, C]`.
    batch_size: images per call.

  Returns:
    Logits `[N, num_classes]`.

  Raises:
    ValueError: if `images` is not rank 4 or is empty.
    TypeError / ValueError: if `batch_size` is not an int >= 1.
  """
  checks.check_rank("images", images, 4, "[N, H, W, C]")
  checks.check_int("batch_size", batch_size, minimum=1)
  n = images.shape[0]
  if n == 0:
    raise ValueError(f"images must hold at least one image, got {n}.")
  size = min(batch_size, n)
  outputs = []
  for start in range(0, n, size):
    chunk = np.asarray(images[start : start + size], np.float32)
    rows = len(chunk)
    if rows < size:
      pad = np.zeros((size - rows, *chunk.shape[1:]), np.float32)
      chunk = np.concatenate([chunk, pad])
    outputs.append(_apply_eval(model, variables, jnp.asarray(chunk))[:rows])
  return jnp.concatenate(outputs, axis=0)
