"""Export a trained P4CNN / P4MCNN as a plain CNN for deployment.

A G-CNN's weight sharing is a training-time constraint: at inference the
filter banks are fixed, so every transformed copy can be computed once and
the network run as ordinary convolutions (escnn's `.export()` does the same
for PyTorch). Cohen & Welling (ICML 2016), section 7: a G-convolution is a
plain convolution with an expanded filter bank.

- Lifting layer: `gconv.lifting_filter_bank(w)` `[k, k, Cin, F * G]`, the
  bias repeated over the group (`o * G + g`).
- Group layer: `gconv.group_filter_bank(w)` `[k, k, F_in * G, F * G]`.
- Group batch norm in eval mode is an affine map per G-channel,
  `y = (x - mean) * scale / sqrt(var + eps) + shift`, folded into the
  preceding convolution: kernel times the multiplier, bias moved likewise.
- Group pooling (rotation pooling and the final one) is a max over the G
  consecutive channels of each G-channel; the 2x2 spatial max pool and the
  spatial mean are as in the group network.

The exported network (`ExportedCNN`, flax `nn.Conv` layers) is the group
network in evaluation mode (running batch statistics) and computes the same
logits to float error. Channel layout of its feature maps: `c * G + g`,
the layout `equivlab.gconv` uses inside its convolutions.
"""

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from equivlab import checks, gconv, groups, testing
from equivlab.nn import layers

__all__ = [
  "ExportedCNN",
  "export_p4cnn",
  "fold_batch_norm",
  "group_layer_params",
  "lifting_layer_params",
]

_NUM_LAYERS = 7  # P4CNN: six 3x3 conv + norm + ReLU layers, one 4x4 conv.
_POOL_AFTER = 1  # The 2x2 spatial max pool follows layer 1.


def _pool_group(h: jax.Array, order: int) -> jax.Array:
  """`[N, H, W, C * G]` -> `[N, H, W, C]`: max over each G-channel."""
  return jnp.max(h.reshape(*h.shape[:3], -1, order), axis=-1)


class ExportedCNN(nn.Module):
  """The plain CNN an exported P4CNN / P4MCNN runs as (evaluation only).

  Layers `conv_0 .. conv_6` are VALID `nn.Conv`s holding the expanded
  filter banks with batch norm folded in; ReLU after each but the last;
  with `rotation_pooling`, a max over the group after each ReLU; a 2x2 max
  pool after layer 1; then a max over the group and the mean over space.

  Attributes:
    features: output channels of each conv (G-channels times G, or
      `num_classes * G` for the last).
    kernel_sizes: the kernel side of each conv.
    group_order: G (4 for p4, 8 for p4m).
    rotation_pooling: pool over the group after every hidden layer.
    dtype: the computation dtype (None: promote input and parameters).
    output_dtype: the logits' dtype (the group network returns float32);
      None keeps the computation dtype.
  """

  features: Sequence[int]
  kernel_sizes: Sequence[int]
  group_order: int
  rotation_pooling: bool = False
  dtype: Any = None
  output_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """Maps images `[N, H, H, C]` to logits `[N, num_classes]`."""
    checks.check_rank("x", x, 4, "images [N, H, W, C]")
    h, last = x, len(self.features) - 1
    for i, (width, k) in enumerate(
      zip(self.features, self.kernel_sizes, strict=True)
    ):
      h = nn.Conv(
        width, (k, k), padding="VALID", dtype=self.dtype, name=f"conv_{i}"
      )(h)
      if i == last:
        break
      h = nn.relu(h)
      if self.rotation_pooling:
        h = _pool_group(h, self.group_order)
      if i == _POOL_AFTER:
        h = nn.max_pool(h, (2, 2), strides=(2, 2))
    h = jnp.mean(_pool_group(h, self.group_order), axis=(1, 2))
    return h if self.output_dtype is None else h.astype(self.output_dtype)


# --------------------------------------------------------------------------
# Parameters, layer by layer: pure functions.


def lifting_layer_params(
  kernel: Any, bias: Any | None, group: str = "p4"
) -> tuple[np.ndarray, np.ndarray]:
  """A lifting conv's plain-convolution kernel and bias.

  Args:
    kernel: `[k, k, Cin, F]`.
    bias: `[F]` (one per G-channel) or None.
    group: "p4" or "p4m".

  Returns:
    `(kernel [k, k, Cin, F * G], bias [F * G])`, channel `o * G + g`, so
    that a plain correlation gives `lifting_conv` reshaped to
    `[N, H', W', F * G]`.
  """
  bank = np.asarray(gconv.lifting_filter_bank(kernel, group))
  return bank, _repeat_bias(bias, kernel, groups.group_order(group))


def group_layer_params(
  kernel: Any, bias: Any | None, group: str = "p4"
) -> tuple[np.ndarray, np.ndarray]:
  """A group conv's plain-convolution kernel and bias.

  Args:
    kernel: `[k, k, Cin, G, F]`.
    bias: `[F]` or None.
    group: "p4" or "p4m".

  Returns:
    `(kernel [k, k, Cin * G, F * G], bias [F * G])` for maps laid out as
    `[N, H, W, C * G]` (channel `c * G + g`).
  """
  bank = np.asarray(gconv.group_filter_bank(kernel, group))
  return bank, _repeat_bias(bias, kernel, groups.group_order(group))


def _repeat_bias(bias, kernel, order):
  features = np.shape(kernel)[-1]
  dtype = np.asarray(kernel).dtype
  if bias is None:
    return np.zeros(features * order, dtype)
  bias = np.asarray(bias)
  if bias.shape != (features,):
    raise ValueError(
      f"bias must be [{features}] (one per output G-channel), got shape "
      f"{bias.shape}."
    )
  return np.repeat(bias, order).astype(dtype)


def fold_batch_norm(
  kernel: np.ndarray,
  bias: np.ndarray,
  norm: dict[str, Any],
  stats: dict[str, Any],
  *,
  order: int,
  epsilon: float,
) -> tuple[np.ndarray, np.ndarray]:
  """Folds an eval-mode group batch norm into the conv before it.

  `bn(conv(x) + b) = conv(x) * m + (b - mean) * m + shift` with
  `m = scale / sqrt(var + epsilon)`, each repeated over the G consecutive
  output channels of a G-channel. Computed in float64, returned in the
  kernel's dtype.

  Args:
    kernel: a plain kernel `[k, k, Cin, F * G]`.
    bias: `[F * G]`.
    norm: the batch norm's parameters {"scale": [F], "bias": [F]}.
    stats: its running statistics {"mean": [F], "var": [F]}.
    order: G.
    epsilon: the batch norm's epsilon.

  Returns:
    The folded `(kernel, bias)`.
  """
  f64 = {
    k: np.asarray(v, np.float64) for k, v in (*norm.items(), *stats.items())
  }
  mul = np.repeat(f64["scale"] / np.sqrt(f64["var"] + epsilon), order)
  mean = np.repeat(f64["mean"], order)
  shift = np.repeat(f64["bias"], order)
  dtype = kernel.dtype
  new_kernel = (kernel.astype(np.float64) * mul).astype(dtype)
  new_bias = ((bias.astype(np.float64) - mean) * mul + shift).astype(dtype)
  return new_kernel, new_bias


# --------------------------------------------------------------------------
# Whole networks.


def _layer_names(model: layers.P4CNN) -> tuple[list[str], list[str]]:
  """The flax names of P4CNN's convolutions and batch norms, in order."""
  if model.rotation_pooling:
    convs = [f"LiftingConv_{i}" for i in range(_NUM_LAYERS)]
  else:
    convs = ["LiftingConv_0"] + [
      f"GroupConv_{i}" for i in range(_NUM_LAYERS - 1)
    ]
  return convs, [f"GroupBatchNorm_{i}" for i in range(_NUM_LAYERS - 1)]


def _collection(variables, name: str, expected: list[str]) -> dict:
  if not hasattr(variables, "get") or variables.get(name) is None:
    got = list(variables) if hasattr(variables, "keys") else variables
    raise ValueError(
      f"variables must hold {name!r} (a trained P4CNN's variables, with "
      f"batch statistics from train-mode steps), got {got!r}."
    )
  tree = variables[name]
  missing = [k for k in expected if k not in tree]
  if missing:
    raise ValueError(
      f"variables[{name!r}] lacks {missing} for this P4CNN (expected "
      f"{expected}, got {sorted(tree)}): were the variables made by another "
      f"model or configuration?"
    )
  return tree


def export_p4cnn(
  model: layers.P4CNN, variables: Any, *, check_on: Any | None = None
) -> tuple[ExportedCNN, dict[str, Any]]:
  """The plain CNN that computes a trained P4CNN's eval-mode logits.

  Works for `models.get_model("p4cnn" | "p4cnn_rotpool" | "p4mcnn")`, i.e.
  `layers.P4CNN` and `layers.P4MCNN` with any group, width, class count and
  rotation pooling. Filter banks are expanded and batch norm folded once,
  here.

  Args:
    model: the group network (`layers.P4CNN` or a subclass).
    variables: its variables, {"params": ..., "batch_stats": ...}.
    check_on: optional images `[N, H, H, C]`: if given, both networks are
      run on them and the logits compared (a guard against a P4CNN whose
      layout has changed since this exporter was written).

  Returns:
    `(exported, exported_variables)`: call
    `exported.apply(exported_variables, x)` for logits `[N, num_classes]`.

  Raises:
    TypeError: if `model` is not a `layers.P4CNN`.
    ValueError: if the variables do not match the model.
    RuntimeError: if `check_on` is given and the logits differ by more
      than float error (1e-4 relative in float32, 1e-10 in float64).
  """
  if not isinstance(model, layers.P4CNN):
    raise TypeError(
      f"model must be a layers.P4CNN or P4MCNN (models 'p4cnn', "
      f"'p4cnn_rotpool', 'p4mcnn'), got {type(model).__name__}."
    )
  order = groups.group_order(model.group)
  conv_names, norm_names = _layer_names(model)
  params = _collection(variables, "params", conv_names + norm_names)
  stats = _collection(variables, "batch_stats", norm_names)
  epsilon = layers.GroupBatchNorm.epsilon  # P4CNN keeps the default.
  plain = {}
  for i, name in enumerate(conv_names):
    conv = params[name]
    lifting = name.startswith("LiftingConv")
    to_plain = lifting_layer_params if lifting else group_layer_params
    kernel, bias = to_plain(conv["kernel"], conv.get("bias"), model.group)
    if i < len(norm_names):
      norm = norm_names[i]
      kernel, bias = fold_batch_norm(
        kernel, bias, params[norm], stats[norm], order=order, epsilon=epsilon
      )
    plain[f"conv_{i}"] = {"kernel": kernel, "bias": bias}
  exported = ExportedCNN(
    features=tuple(p["kernel"].shape[-1] for p in plain.values()),
    kernel_sizes=tuple(p["kernel"].shape[0] for p in plain.values()),
    group_order=order,
    rotation_pooling=model.rotation_pooling,
    dtype=model.dtype,
  )
  out = {"params": jax.tree.map(jnp.asarray, plain)}
  if check_on is not None:
    _check_same_logits(model, variables, exported, out, check_on)
  return exported, out


def _check_same_logits(model, variables, exported, plain_vars, x) -> None:
  want = np.asarray(model.apply(variables, x, train=False))
  got = np.asarray(exported.apply(plain_vars, x))
  dtypes = [leaf.dtype for leaf in jax.tree.leaves(plain_vars)]
  dtypes.append(np.asarray(x).dtype)
  rtol = testing.default_rtol(*dtypes)
  error = testing.relative_error(got, want)
  if not error <= rtol:
    raise RuntimeError(
      f"the exported network's logits differ from {type(model).__name__}'s "
      f"by {error:.3e} (relative; rtol {rtol:.1e}): has layers.P4CNN's "
      f"layout changed since equivlab.nn.export was written?"
    )
