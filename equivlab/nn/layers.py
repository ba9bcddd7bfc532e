"""flax.linen modules over `equivlab.gconv`: G-convs, pooling, batch norm.

Cohen & Welling, "Group Equivariant Convolutional Networks" (ICML 2016),
section 8.1 (the P4CNN for rotated MNIST).

Every module keeps the pinned layouts: images `[N, H, W, C]`, group feature
maps `[N, H, W, C, G]` with G = 4 ("p4") or 8 ("p4m"). Parameters are shared
across the group axis (one bias, scale and shift per G-channel), so every
module is equivariant: transforming the input by a rotation or mirror
transforms the output the same way (exactly when
`gconv.is_exactly_equivariant` holds for each layer's settings).
"""

import math
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from equivlab import checks, gconv, groups
from equivlab.nn import initializers, normalization
from equivlab.ops import convolution

_LIFTING = {"p4": gconv.lifting_conv, "p4m": gconv.lifting_conv_p4m}
_GROUP = {"p4": gconv.group_conv, "p4m": gconv.group_conv_p4m}


def he_init(in_axes: tuple[int, ...]) -> Callable:
  """He's initialiser (`initializers.kernel_initializer("he")`) whose
  fan-in is the product of `in_axes`.

  For a group conv kernel `[k, k, Cin, G, Cout]` the fan-in is
  `k * k * Cin * G`: every input group channel feeds each output.
  """
  return initializers.kernel_initializer("he", in_axis=in_axes, out_axis=-1)


def _check_conv_module(module) -> None:
  """The shape settings of a `LiftingConv` / `GroupConv`, at construction."""
  name = type(module).__name__
  for field in ("features", "kernel_size", "strides", "kernel_dilation"):
    value = getattr(module, field)
    if not checks.is_int(value) or value < 1:
      raise ValueError(f"{name}.{field} must be an int >= 1, got {value!r}.")
  groups.group_order(module.group)  # the ValueError for an unknown group
  convolution.resolve_impl(module.conv_impl)  # and for an unknown impl
  _resolve_dtypes(module, "dtype", "param_dtype")


def _resolve_dtypes(module, *fields: str) -> None:
  """Checks dtype fields; names and aliases ("bf16") become numpy dtypes.

  Call from `__post_init__`, before flax freezes the module; "dtype" may be
  None (promote), the others must name a float dtype.

  Raises:
    TypeError: naming the module's field, for a non-float dtype.
  """
  name = type(module).__name__
  for field in fields:
    given = getattr(module, field)
    value = checks.float_dtype(
      f"{name}.{field}", given, allow_none=field == "dtype"
    )
    if isinstance(given, str):  # Dtype objects are kept as they came.
      object.__setattr__(module, field, value)


def _float_input(module, x: jax.Array, name: str) -> jax.Array:
  """`x`, with integer or bool inputs cast to the module's float dtype.

  Images often come as uint8 or int: they are cast (not rescaled) to
  `module.dtype`, or to `module.param_dtype` when that is None.

  Raises:
    TypeError: for complex (or other non-real) inputs.
  """
  x = jnp.asarray(x)
  if jnp.issubdtype(x.dtype, jnp.floating):
    return x
  if jnp.issubdtype(x.dtype, jnp.integer) or x.dtype == jnp.bool_:
    dtype = module.dtype or getattr(module, "param_dtype", jnp.float32)
    return x.astype(dtype)
  raise TypeError(
    f"{type(module).__name__} expects real {name} (float, or int/bool to be "
    f"cast), got dtype {x.dtype}."
  )


def _conv_with_bias(module, conv, x, kernel_shape):
  """`module`'s kernel and optional bias (shared over the group), applied.

  For `LiftingConv` and `GroupConv`, which share these attributes; call it
  from their compact `__call__`, where it creates the parameters.
  """
  kernel = module.param(
    "kernel", module.kernel_init, kernel_shape, module.param_dtype
  )
  bias = None
  if module.use_bias:
    bias = module.param(
      "bias", nn.initializers.zeros, (module.features,), module.param_dtype
    )
  x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=module.dtype)
  y = conv(
    x,
    kernel,
    stride=module.strides,
    padding=module.padding,
    dilation=module.kernel_dilation,
    impl=module.conv_impl,
  )
  return normalization.channel_affine(y, bias=bias)


class LiftingConv(nn.Module):
  """Lifting convolution: images `[N, H, W, C]` -> `[N, H', W', F, G]`.

  Integer or bool images (e.g. uint8 pixels) are cast, not rescaled, to
  `dtype` (`param_dtype` if None); complex ones are a TypeError.

  Attributes:
    features: F, the number of output G-channels.
    kernel_size: the square kernel's side.
    strides: the stride (an int).
    padding: "SAME", "VALID", "CIRCULAR", an int or explicit (lo, hi) pairs.
    kernel_dilation: the kernel dilation (an int).
    use_bias: add one bias per output G-channel, shared over the group.
    group: "p4" (G = 4) or "p4m" (G = 8).
    dtype: the computation dtype (None: promote input and parameters); a
      dtype or a name, "float32", "bfloat16", "bf16", ... (see
      `checks.float_dtype`).
    param_dtype: the parameters' dtype (a float dtype or its name).
    kernel_init: initializer of the `[k, k, C, F]` kernel.
    conv_impl: "auto", "xla" or "cpu", how the convolution runs
      (`equivlab.ops.convolution`).
  """

  features: int
  kernel_size: int = 3
  strides: int = 1
  padding: Any = "SAME"
  kernel_dilation: int = 1
  use_bias: bool = True
  group: str = "p4"
  dtype: Any = None
  param_dtype: Any = jnp.float32
  kernel_init: Callable = he_init((0, 1, 2))
  conv_impl: str = "auto"

  def __post_init__(self):
    _check_conv_module(self)
    super().__post_init__()

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    conv = _LIFTING.get(self.group)
    if conv is None:
      groups.group_order(self.group)  # raises the ValueError
    if jnp.ndim(x) != 4:
      raise ValueError(
        f"LiftingConv expects images [N, H, W, C] of rank 4, got shape "
        f"{jnp.shape(x)}."
      )
    x = _float_input(self, x, "images")
    k = self.kernel_size
    return _conv_with_bias(self, conv, x, (k, k, x.shape[-1], self.features))


class GroupConv(nn.Module):
  """Group convolution: `[N, H, W, C, G]` -> `[N, H', W', F, G]`.

  Integer or bool maps are cast to `dtype` (`param_dtype` if None).

  Attributes:
    features: F, the number of output G-channels.
    kernel_size: the square kernel's side.
    strides: the stride (an int).
    padding: "SAME", "VALID", "CIRCULAR", an int or explicit (lo, hi) pairs.
    kernel_dilation: the kernel dilation (an int).
    use_bias: add one bias per output G-channel, shared over the group.
    group: "p4" (G = 4) or "p4m" (G = 8).
    dtype: the computation dtype (None: promote input and parameters); a
      dtype or a name, "float32", "bfloat16", "bf16", ... (see
      `checks.float_dtype`).
    param_dtype: the parameters' dtype (a float dtype or its name).
    kernel_init: initializer of the `[k, k, C, G, F]` kernel (He, with the
      input group axis counted in the fan-in).
    conv_impl: "auto", "xla" or "cpu", how the convolution runs
      (`equivlab.ops.convolution`).
  """

  features: int
  kernel_size: int = 3
  strides: int = 1
  padding: Any = "SAME"
  kernel_dilation: int = 1
  use_bias: bool = True
  group: str = "p4"
  dtype: Any = None
  param_dtype: Any = jnp.float32
  kernel_init: Callable = he_init((0, 1, 2, 3))
  conv_impl: str = "auto"

  def __post_init__(self):
    _check_conv_module(self)
    super().__post_init__()

  @nn.compact
  def __call__(self, f: jax.Array) -> jax.Array:
    order = groups.group_order(self.group)
    if jnp.ndim(f) != 5 or jnp.shape(f)[-1] != order:
      raise ValueError(
        f"GroupConv({self.group!r}) expects group maps [N, H, W, C, {order}]"
        f", got shape {jnp.shape(f)}."
      )
    f = _float_input(self, f, "group maps")
    k = self.kernel_size
    shape = (k, k, f.shape[-2], order, self.features)
    return _conv_with_bias(self, _GROUP[self.group], f, shape)


class Normalization(nn.Module):
  """Batch, layer, instance or group norm, the one normalisation of equivlab.

  The statistics are `normalization.norm_statistics` of the input, which
  may be features `[N, C]`, maps `[N, H, W, C]` or group maps
  `[N, H, W, C, G]` (statistics shared over the group axis, so the layer
  commutes with the group action); there is one scale and one shift per
  channel C. "batch" keeps running averages in the "batch_stats"
  collection ("mean", "var") and uses them when `use_running_average`;
  under `jax.jit` with a sharded batch its statistics are global (GSPMD).

  Attributes:
    kind: "batch", "layer", "instance" or "group".
    num_groups: groups of "group" (None: gcd(C, 8)).
    use_running_average: use the running statistics instead of the batch's
      (may also be given to `__call__`); only "batch" has them.
    momentum: decay of the running averages.
    epsilon: added to the variance.
    dtype: the computation dtype (None: the input's; integer inputs are
      cast to `param_dtype`); a dtype or a name ("bf16", "float32", ...).
    param_dtype: dtype of scale, bias and statistics.
  """

  kind: str = "batch"
  num_groups: int | None = None
  use_running_average: bool | None = None
  momentum: float = 0.9
  epsilon: float = 1e-5
  dtype: Any = None
  param_dtype: Any = jnp.float32

  def __post_init__(self):
    checks.check_choice("kind", self.kind, normalization.NORM_KINDS)
    checks.check_int("num_groups", self.num_groups, minimum=1, allow_none=True)
    checks.check_number(
      "momentum", self.momentum, minimum=0, maximum=1, strict_maximum=True
    )
    checks.check_number("epsilon", self.epsilon, minimum=0, strict_minimum=True)
    _resolve_dtypes(self, "dtype", "param_dtype")
    super().__post_init__()

  @nn.compact
  def __call__(
    self, x: jax.Array, use_running_average: bool | None = None
  ) -> jax.Array:
    checks.check_rank(
      "x", x, (2, 4, 5), "[N, C], [N, H, W, C] or [N, H, W, C, G]"
    )
    x = _float_input(self, x, "inputs")
    channels = x.shape[-2] if x.ndim == 5 else x.shape[-1]
    scale = self.param("scale", nn.initializers.ones, (channels,))
    bias = self.param("bias", nn.initializers.zeros, (channels,))
    stats = x.astype(jnp.promote_types(x.dtype, jnp.float32))
    if self.kind == "batch":
      mean, var = self._batch_statistics(stats, channels, use_running_average)
    else:
      groups_ = self.num_groups or math.gcd(channels, 8)
      mean, var = normalization.norm_statistics(stats, self.kind, groups_)
    dtype = self.dtype or x.dtype
    if self.kind == "batch":  # one statistic per channel: `channel_affine`
      mean, var = mean.reshape(channels), var.reshape(channels)
      mul = (jax.lax.rsqrt(var + self.epsilon) * scale).astype(dtype)
      return normalization.channel_affine(
        x, mean.astype(dtype), mul, bias.astype(dtype)
      ).astype(dtype)
    mul = (jax.lax.rsqrt(var + self.epsilon) * _channel(scale, x)).astype(dtype)
    y = (x - mean.astype(dtype)) * mul
    return (y + _channel(bias, x).astype(dtype)).astype(dtype)

  def _batch_statistics(self, x, channels, use_running_average):
    use_running_average = nn.merge_param(
      "use_running_average", self.use_running_average, use_running_average
    )
    ra_mean = self.variable(
      "batch_stats", "mean", jnp.zeros, (channels,), self.param_dtype
    )
    ra_var = self.variable(
      "batch_stats", "var", jnp.ones, (channels,), self.param_dtype
    )
    if use_running_average:
      return _channel(ra_mean.value, x), _channel(ra_var.value, x)
    mean, var = normalization.norm_statistics(x, "batch")
    if not self.is_initializing():
      m = self.momentum
      ra_mean.value = m * ra_mean.value + (1 - m) * mean.reshape(channels)
      ra_var.value = m * ra_var.value + (1 - m) * var.reshape(channels)
    return mean, var


def _channel(v: jax.Array, x: jax.Array) -> jax.Array:
  return normalization.per_channel(v, x.ndim)


class GroupBatchNorm(Normalization):
  """Batch norm of group maps `[N, H, W, C, G]`, statistics shared over G.

  `Normalization(kind="batch")`, kept by this name for the G-CNNs.
  """

  kind: str = "batch"


class GroupPool(nn.Module):
  """Pools the group axis: `[N, H, W, C, G]` -> `[N, H, W, C]`.

  Attributes:
    reduce: "max" or "mean".
  """

  reduce: str = "max"

  def __call__(self, f: jax.Array) -> jax.Array:
    return gconv.group_pool(f, self.reduce)


class SpatialMaxPool(nn.Module):
  """Max pooling over (H, W) that keeps equivariance (even sizes, 2x2/2).

  Attributes:
    window: the square window's side.
    strides: the stride; `window` if None.
    padding: "VALID", "SAME", an int or explicit (lo, hi) pairs.
  """

  window: int = 2
  strides: int | None = None
  padding: Any = "VALID"

  def __call__(self, f: jax.Array) -> jax.Array:
    return gconv.spatial_max_pool(f, self.window, self.strides, self.padding)


def _check_square_images(x: jax.Array, name: str, min_size: int) -> None:
  """Raises unless `x` is square images `[N, H, H, C]` with H >= min_size.

  Rotations map H to W, so a network meant to be invariant to them takes
  square images only.
  """
  shape = x.shape
  if x.ndim != 4 or shape[1] != shape[2] or shape[1] < min_size:
    raise ValueError(
      f"{name} expects square images [N, H, H, C] with H >= {min_size}, "
      f"got shape {shape}."
    )


class P4CNN(nn.Module):
  """Cohen & Welling's P4CNN (and P4MCNN) for rotated MNIST.

  Seven 'VALID' layers as in the paper's Z2CNN: a 3x3 lifting conv, five
  3x3 group convs, each followed by group batch norm and ReLU, a 2x2 max
  pool after layer 2, then a 4x4 group conv to `num_classes` G-channels,
  group (max) pooling and global spatial (mean) pooling. On 28x28 inputs
  the sizes run 26, 24, 12, 10, 8, 6, 4, 1. Every layer is exactly
  equivariant when each pooled size is even, so the logits are invariant to
  the group's rotations (and mirrors for "p4m"). About 25k parameters at
  `features=10` for p4.

  Attributes:
    num_classes: the number of logits.
    features: G-channels per hidden layer.
    group: "p4" or "p4m" (P4MCNN).
    rotation_pooling: the paper's "P4CNN rotation pooling": pool over the
      group after every layer, so each next layer lifts the image again.
    dtype: the computation dtype (None: float32 from the parameters); a
      dtype or a name ("bfloat16", "bf16", ...).
  """

  num_classes: int = 10
  features: int = 10
  group: str = "p4"
  rotation_pooling: bool = False
  dtype: Any = None

  # 28 -> 26 -> 24 -> 12 -> 10 -> 8 -> 6 -> 4 -> 1: the smallest input.
  MIN_SIZE = 28

  def __post_init__(self):
    checks.check_int("num_classes", self.num_classes, minimum=1)
    checks.check_int("features", self.features, minimum=1)
    groups.group_order(self.group)  # The ValueError for an unknown group.
    _resolve_dtypes(self, "dtype")
    if not isinstance(self.rotation_pooling, bool):
      raise TypeError(
        f"rotation_pooling must be a bool, got {self.rotation_pooling!r}."
      )
    super().__post_init__()

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    """Maps square images `[N, H, H, C]` (H >= 28) to logits `[N, K]`."""
    _check_square_images(x, type(self).__name__, self.MIN_SIZE)
    opts = dict(padding="VALID", group=self.group, dtype=self.dtype)
    h = x
    for layer in range(7):
      last = layer == 6
      width = self.num_classes if last else self.features
      ksize = 4 if last else 3
      if layer == 0 or self.rotation_pooling:
        h = LiftingConv(width, ksize, **opts)(h)
      else:
        h = GroupConv(width, ksize, **opts)(h)
      if last:
        break
      h = GroupBatchNorm(use_running_average=not train, dtype=self.dtype)(h)
      h = nn.relu(h)
      if self.rotation_pooling:
        h = gconv.group_pool(h, "max")
      if layer == 1:
        h = gconv.spatial_max_pool(h, 2)
    h = gconv.group_pool(h, "max")
    return jnp.mean(h, axis=(1, 2)).astype(jnp.float32)


class P4MCNN(P4CNN):
  """The P4CNN over p4m (rotations and mirrors): `P4CNN(group="p4m")`."""

  group: str = "p4m"


class P4GapCNN(nn.Module):
  """A P4CNN invariant to circular shifts and to rot90: the "p4cnn_gap".

  Cohen & Welling's P4CNN shrinks 28x28 inputs to 1x1 with "VALID"
  convolutions and a stride-2 pool, so where a digit sits still matters to
  its logits. This network keeps the full resolution instead: a 3x3 lifting
  conv and 3x3 group convs with "CIRCULAR" padding and growing dilation
  (1, 2, 4, 8: a 31-pixel receptive field), each followed by group batch
  norm and ReLU, then max pooling over the group, the mean over space and a
  dense layer. Every stride-1 circular layer commutes with circular shifts
  and with rot90 of a square input, and the pooled features are invariant
  to both; zero-filled shifts of a digit that stays inside the frame are
  circular shifts, so such a digit gets the same logits wherever it is.
  About 23k parameters with the default widths (8, 16, 16, 16).

  Invariance to rot90 has a price on upright digits: a 6 turned by 180
  degrees is a 9. With `pool_group=False` the head reads the spatial means
  of every orientation (`[C, G]` flattened) instead of their maximum: the
  logits stay invariant to circular shifts, the features still rotate with
  the input (cyclically along G), but the head may tell the orientations
  apart.

  Attributes:
    num_classes: the number of logits.
    features: G-channels of each conv layer.
    dilations: the kernel dilation of each conv layer.
    group: "p4" or "p4m".
    pool_group: max-pool the group axis before the head (logits invariant
      to rot90); False: the head sees every orientation.
    dtype: the computation dtype (None: float32 from the parameters); a
      dtype or a name ("bfloat16", "bf16", ...).
  """

  num_classes: int = 10
  features: Sequence[int] = (8, 16, 16, 16)
  dilations: Sequence[int] = (1, 2, 4, 8)
  group: str = "p4"
  pool_group: bool = True
  dtype: Any = None

  def __post_init__(self):
    checks.check_int("num_classes", self.num_classes, minimum=1)
    checks.check_ints("features", self.features, minimum=1)
    checks.check_ints("dilations", self.dilations, minimum=1)
    groups.group_order(self.group)  # The ValueError for an unknown group.
    _resolve_dtypes(self, "dtype")
    if len(self.features) != len(self.dilations):
      raise ValueError(
        f"features and dilations must be of one length, got "
        f"{tuple(self.features)} and {tuple(self.dilations)}."
      )
    super().__post_init__()

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    """Maps square images `[N, H, H, C]` to logits `[N, num_classes]`."""
    _check_square_images(x, type(self).__name__, 1)
    h = x
    for layer, (width, dilation) in enumerate(
      zip(self.features, self.dilations, strict=True)
    ):
      conv = LiftingConv if layer == 0 else GroupConv
      h = conv(
        width,
        3,
        padding="CIRCULAR",
        kernel_dilation=dilation,
        group=self.group,
        dtype=self.dtype,
      )(h)
      h = GroupBatchNorm(use_running_average=not train, dtype=self.dtype)(h)
      h = nn.relu(h)
    if self.pool_group:
      h = jnp.mean(gconv.group_pool(h, "max"), axis=(1, 2))
    else:
      h = jnp.mean(h, axis=(1, 2)).reshape(h.shape[0], -1)
    return nn.Dense(self.num_classes, dtype=self.dtype)(h).astype(jnp.float32)
