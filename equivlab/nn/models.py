"""Classifiers for the digit experiments: MLP, CNNs, Z2CNN, deep nets, G-CNNs.

Every model maps images `[N, H, W, C]` to logits `[N, num_classes]` and is
called as `model.apply(variables, x, train=..., rngs=...)`; models with batch
norm keep their statistics in the "batch_stats" collection and models with
dropout draw from a "dropout" rng when `train=True`. Attributes are checked
when a model is made (a bad one is a ValueError or TypeError naming it), and
the input when it is first called (at `init`), with the smallest image size
a model accepts in the message.

- "mlp": a multilayer perceptron on the flattened pixels.
- "cnn": a convolutional model, conv blocks and a dense head.
- "cnn_gap": a CNN with a global-average-pooling head and no striding:
  four 3x3 convolutions with circular padding and dilations 1, 2, 4, 8 (a
  31-pixel receptive field) and batch norm, so every layer commutes with
  circular shifts and the average over space is exactly invariant to them
  (zero-filled shifts of a digit that stays inside the frame are circular
  shifts).
- "z2cnn": Cohen & Welling 2016 (section 8.1, Table 1): 7 layers of 3x3
  convolutions (4x4 in the last), 20 channels, ReLU, batch norm, a 2x2 max
  pool after layer 2; 21,750 parameters. `PlainCNN` (not a registered
  name: the zoo's names are the studies' trained networks) is the same
  layout without batch norm, the untrained baseline of equivariance checks.
- "deep_mlp", "deep_cnn": `DeepMLP` and `DeepCNN`, the networks of the
  depth study (vanishing gradients; Glorot & Bengio 2010, He et al. 2016
  "Deep Residual Learning"): L layers of one width, a chosen activation,
  optional residual connections and batch norm.
- "p4cnn", "p4cnn_rotpool", "p4mcnn": `equivlab.nn.layers.P4CNN`, the same
  network with p4 (or p4m) group convolutions, with or without rotation
  pooling after every layer.
- "p4cnn_gap": `equivlab.nn.layers.P4GapCNN`, "cnn_gap" made of p4 group
  convolutions: invariant to circular shifts and to rot90 at once.

The normalisations are `layers.Normalization` (one implementation over
`normalization.norm_statistics`), the weight initialisers come from
`initializers.kernel_initializer`, the activations from
`initializers.ACTIVATIONS`.
"""

import dataclasses
import functools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from equivlab import checks, gconv
from equivlab.nn import initializers, layers
from equivlab.ops import convolution, xla_options

# flax's convolution through `equivlab.ops.convolution` (its CPU fast path;
# one XLA convolution on accelerators). Still `nn.Conv`: same parameter
# names and checkpoints.
Conv = functools.partial(
  nn.Conv, conv_general_dilated=convolution.conv_general_dilated
)

MODEL_NAMES = (
  "mlp",
  "cnn",
  "cnn_gap",
  "z2cnn",
  "deep_mlp",
  "deep_cnn",
  "p4cnn",
  "p4cnn_rotpool",
  "p4mcnn",
  "p4cnn_gap",
)
NORMS = (None, "batch", "layer", "group", "instance")
KERNEL_INITS = initializers.SCHEMES
PADDINGS = ("SAME", "VALID", "CIRCULAR")
DEPTH_ACTIVATIONS = ("sigmoid", "tanh", "relu")


def _check_common(model: nn.Module) -> None:
  """The attributes most models share, when they have them."""
  checks.check_int("num_classes", model.num_classes, minimum=1)
  rate = getattr(model, "dropout_rate", 0.0)
  checks.check_number(
    "dropout_rate", rate, minimum=0, maximum=1, strict_maximum=True
  )


def check_images(x: Any, name: str, min_size: int = 1, square=False) -> None:
  """Raises ValueError unless `x` is images `[N, H, W, C]` `name` accepts.

  Args:
    x: the input.
    name: the model's name, for the message.
    min_size: the smallest accepted height and width.
    square: whether H must equal W.
  """
  shape = np.shape(x)
  if len(shape) != 4:
    raise ValueError(
      f"{name} expects images [N, H, W, C] (rank 4), got shape {shape}; "
      "reshape flat inputs [N, D] to images first."
    )
  h, w = shape[1:3]
  if h < min_size or w < min_size or (square and h != w):
    kind = "square images" if square else "images"
    raise ValueError(
      f"{name} needs {kind} of at least {min_size}x{min_size} pixels, got "
      f"{h}x{w} (shape {shape})."
    )


def _normalize(x: jax.Array, norm: str | None, train: bool) -> jax.Array:
  """Applies the normalisation called `norm` (None: none) over channels."""
  if norm is None:
    return x
  return layers.Normalization(kind=norm, use_running_average=not train)(x)


class MLP(nn.Module):
  """A multilayer perceptron on flattened images.

  Attributes:
    num_classes: number of logits.
    hidden_sizes: widths of the ReLU hidden layers.
    dropout_rate: dropout after every hidden layer when training.
  """

  num_classes: int = 10
  hidden_sizes: Sequence[int] = (256, 256)
  dropout_rate: float = 0.0

  def __post_init__(self):
    _check_common(self)
    checks.check_ints("hidden_sizes", self.hidden_sizes, minimum=1)
    super().__post_init__()

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    """Maps `[N, H, W, C]` images to logits `[N, num_classes]`."""
    check_images(x, "MLP")
    x = x.reshape(x.shape[0], -1)
    for width in self.hidden_sizes:
      x = nn.relu(nn.Dense(width)(x))
      x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    return nn.Dense(self.num_classes)(x)


def _smallest_size(size_after: Any, limit: int = 4096) -> int:
  """The smallest n with `size_after(n) >= 1` (the stack's output size)."""
  for n in range(1, limit):
    if size_after(n) >= 1:
      return n
  raise ValueError(f"no input size up to {limit} fits this network.")


class CNN(nn.Module):
  """Convolutional blocks and a dense or global-average-pooling head.

  Each block is a 3x3 convolution (padding `padding`, dilation from
  `dilations`), the normalisation `norm`, ReLU and, if `pool`, a 2x2 max
  pool. The "dense" head (the classic CNN head) flattens the last
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
    kernel_init: a scheme of `initializers.kernel_initializer` ("lecun",
      "he", "xavier", "normal", ...), for every convolution and dense layer.
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

  def __post_init__(self):
    _check_common(self)
    checks.check_ints("features", self.features, minimum=1)
    checks.check_choice("head", self.head, ("dense", "gap"))
    checks.check_choice("padding", self.padding, PADDINGS)
    checks.check_choice("norm", self.norm, NORMS)
    checks.check_choice("kernel_init", self.kernel_init, KERNEL_INITS)
    checks.check_int("dense_features", self.dense_features, minimum=1)
    if self.dilations is not None:
      checks.check_ints("dilations", self.dilations, minimum=1)
      if len(self.dilations) != len(self.features):
        raise ValueError(
          f"dilations must have one entry per block ({len(self.features)}),"
          f" got {tuple(self.dilations)}."
        )
    super().__post_init__()

  def min_size(self) -> int:
    """The smallest image side the blocks accept."""
    dilations = self.dilations or (1,) * len(self.features)

    def size_after(n: int) -> int:
      for dilation in dilations:
        n -= 2 * dilation if self.padding == "VALID" else 0
        n = n // 2 if self.pool and n >= 1 else n
      return n

    return _smallest_size(size_after)

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    """Maps `[N, H, W, C]` images to logits `[N, num_classes]`.

    Raises:
      ValueError: for images that are not rank 4 or smaller than
        `min_size()` pixels a side.
    """
    check_images(x, "CNN", min_size=self.min_size())
    init = initializers.kernel_initializer(self.kernel_init)
    dilations = self.dilations or (1,) * len(self.features)
    for width, dilation in zip(self.features, dilations, strict=True):
      x = Conv(
        width,
        (3, 3),
        padding=self.padding,
        kernel_dilation=dilation,
        kernel_init=init,
      )(x)
      x = nn.relu(_normalize(x, self.norm, train))
      if self.pool:
        x = gconv.spatial_max_pool(x, 2)
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

  def __post_init__(self):
    _check_common(self)
    checks.check_int("features", self.features, minimum=1)
    super().__post_init__()

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    """Maps `[N, H, W, C]` images (H, W >= 28) to logits `[N, num_classes]`.

    Raises:
      ValueError: for images that are not rank 4 or smaller than 28x28.
    """
    check_images(x, "Z2CNN", min_size=28)
    for layer in range(6):
      x = Conv(self.features, (3, 3), padding="VALID")(x)
      x = _normalize(x, "batch", train)
      x = nn.relu(x)
      x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
      if layer == 1:
        x = gconv.spatial_max_pool(x, 2)
    x = Conv(self.num_classes, (4, 4), padding="VALID")(x)
    return jnp.mean(x, axis=(1, 2))


class PlainCNN(nn.Module):
  """The P4CNN's layout with ordinary convolutions and no normalisation.

  `Z2CNN` without batch norm or dropout: six 3x3 "VALID" convolutions of
  `features` channels with ReLU (a 2x2 max pool after layer 2) and a last
  4x4 convolution to the logits, averaged over space. With `features = 4 *`
  a P4CNN's G-channels it is that network's plain counterpart (same
  layout, no rotation symmetry), the baseline of equivariance checks.

  Attributes:
    num_classes: the number of logits.
    features: channels per hidden layer.
  """

  num_classes: int = 10
  features: int = 20

  def __post_init__(self):
    _check_common(self)
    checks.check_int("features", self.features, minimum=1)
    super().__post_init__()

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    """Images `[N, H, W, C]` (H, W >= 28) -> logits `[N, num_classes]`.

    Raises:
      ValueError: for images that are not rank 4 or smaller than 28x28.
    """
    del train  # No batch statistics or dropout.
    check_images(x, "PlainCNN", min_size=28)
    for layer in range(6):
      x = nn.relu(Conv(self.features, (3, 3), padding="VALID")(x))
      if layer == 1:
        x = gconv.spatial_max_pool(x, 2)
    x = Conv(self.num_classes, (4, 4), padding="VALID")(x)
    return jnp.mean(x, axis=(1, 2))


class DeepMLP(nn.Module):
  """`depth` hidden dense layers of one width, then dense logits.

  Hidden layer l computes `z_l = W_l h_{l-1} + b_l` (batch-normalised if
  `batch_norm`) and `h_l = act(z_l)`, or `h_l = h_{l-1} + act(z_l)` with
  `residual` (He et al. 2016's F(x) + x; not for l = 0, which changes the
  width). Layers are named "layer_00", "layer_01", ..., their norms
  "bn_00", ..., the logits "output", so per-layer gradient norms sort in
  depth order and the pre-activations can be read by name
  (`probes.pre_activations`).

  Attributes:
    depth: number of hidden layers (>= 1).
    width: their width.
    activation: "sigmoid", "tanh" or "relu".
    residual: skip connections around every hidden layer but the first.
    batch_norm: batch norm before every activation.
    num_classes: number of logits.
  """

  depth: int = 4
  width: int = 128
  activation: str = "relu"
  residual: bool = False
  batch_norm: bool = False
  num_classes: int = 10

  def __post_init__(self):
    _check_deep(self)
    super().__post_init__()

  def layer(self, h: jax.Array, index: int, train: bool) -> jax.Array:
    """Hidden layer `index` of `h` (shared by `DeepMLP` and `DeepCNN`)."""
    if isinstance(self, DeepCNN):
      z = Conv(
        self.width,
        (3, 3),
        strides=2 if index == 0 else 1,
        name=f"layer_{index:02d}",
      )(h)
    else:
      z = nn.Dense(self.width, name=f"layer_{index:02d}")(h)
    if self.batch_norm:
      z = layers.Normalization(
        "batch", use_running_average=not train, name=f"bn_{index:02d}"
      )(z)
    a = initializers.ACTIVATIONS[self.activation](z)
    return h + a if self.residual and index > 0 else a

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    """Maps `[N, H, W, C]` images to logits `[N, num_classes]`."""
    check_images(x, "DeepMLP")
    h = x.reshape(x.shape[0], -1)
    for index in range(self.depth):
      h = self.layer(h, index, train)
    return nn.Dense(self.num_classes, name="output")(h)


class DeepCNN(DeepMLP):
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

  width: int = 16

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    """Maps `[N, H, W, C]` images (H, W >= 2) to logits `[N, K]`."""
    check_images(x, "DeepCNN", min_size=2)
    h = x
    for index in range(self.depth):
      h = self.layer(h, index, train)
    return nn.Dense(self.num_classes, name="output")(jnp.mean(h, axis=(1, 2)))


def _check_deep(model: DeepMLP) -> None:
  _check_common(model)
  checks.check_int("depth", model.depth, minimum=1)
  checks.check_int("width", model.width, minimum=1)
  checks.check_choice("activation", model.activation, DEPTH_ACTIVATIONS)
  for name in ("residual", "batch_norm"):
    if not isinstance(getattr(model, name), bool):
      raise TypeError(f"{name} must be a bool, got {getattr(model, name)!r}.")


# The G-CNNs' defaults give the paper's sizes: "p4cnn" and "p4cnn_rotpool"
# use 10 G-channels, "p4mcnn" 7 (about the same parameter count, since a
# p4m channel holds 8 orientations, not 4).
_P4CNN_DEFAULTS = {
  "p4cnn": {"features": 10, "group": "p4", "rotation_pooling": False},
  "p4cnn_rotpool": {"features": 10, "group": "p4", "rotation_pooling": True},
  "p4mcnn": {"features": 7, "group": "p4m", "rotation_pooling": False},
}
_CNN_GAP_DEFAULTS = {
  "features": (16, 32, 32, 32),
  "dilations": (1, 2, 4, 8),
  "pool": False,
  "padding": "CIRCULAR",
  "norm": "batch",
  "head": "gap",
}


def _model_class(name: str) -> tuple[type, dict[str, Any]]:
  """The class of model `name` and its default keyword arguments."""
  if name in _P4CNN_DEFAULTS:
    return layers.P4CNN, _P4CNN_DEFAULTS[name]
  classes = {
    "mlp": (MLP, {}),
    "cnn": (CNN, {}),
    "cnn_gap": (CNN, _CNN_GAP_DEFAULTS),
    "z2cnn": (Z2CNN, {}),
    "deep_mlp": (DeepMLP, {}),
    "deep_cnn": (DeepCNN, {}),
    "p4cnn_gap": (layers.P4GapCNN, {}),
  }
  if name not in classes:
    raise ValueError(f"model must be one of {MODEL_NAMES}, got {name!r}.")
  return classes[name]


def get_model(name: str, *, num_classes: int = 10, **kwargs: Any) -> nn.Module:
  """The model called `name`, configured by keyword arguments.

  Args:
    name: one of `MODEL_NAMES`.
    num_classes: number of logits (>= 1).
    **kwargs: attributes of the model class (e.g. `norm="batch"` for "cnn",
      `features=12` for "p4cnn"); defaults give the paper's sizes.

  Returns:
    A flax linen module mapping `[N, H, W, C]` to `[N, num_classes]`.

  Raises:
    ValueError: if `name` is unknown, a keyword is not an attribute of the
      model, or an attribute's value is out of range.
    TypeError: if an attribute's value is of the wrong kind.
  """
  if not isinstance(name, str):
    raise ValueError(f"model must be one of {MODEL_NAMES}, got {name!r}.")
  cls, defaults = _model_class(name)
  accepted = sorted(
    f.name
    for f in dataclasses.fields(cls)
    if f.init and f.name not in ("parent", "name", "num_classes")
  )
  unknown = sorted(set(kwargs) - set(accepted))
  if unknown:
    raise ValueError(
      f"unknown keyword arguments {unknown} for model {name!r}; it accepts "
      f"{accepted}."
    )
  return cls(num_classes=num_classes, **{**defaults, **kwargs})


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


@functools.partial(xla_options.jit, static_argnums=0, inference=True)
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
