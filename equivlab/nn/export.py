"""Export a network built from equivlab layers as plain convolutions.

A G-CNN's weight sharing is a training-time constraint: at inference the
filter banks are fixed, so every transformed copy can be computed once and
the network run as ordinary convolutions (escnn's `.export()` does the same
for PyTorch). Cohen & Welling (ICML 2016), section 7: a G-convolution is a
plain convolution with an expanded filter bank.

- `LiftingConv` / `GroupConv` (p4, p4m; any padding, stride, dilation):
  one plain convolution on `[N, H, W, C * G]` (channel `c * G + g`) with
  the expanded bank and the bias repeated over the group.
- Eval-mode batch norm: the affine map `x * m + (shift - mean * m)`,
  `m = scale / sqrt(var + eps)`, folded into the convolution before it
  when it takes that convolution's output directly.
- Everything else (flax layers such as `nn.Dense`, activations, spatial
  and group pooling, the model's array code) runs as it is.

`export` checks the result against the group network before it returns;
`save_inference` serialises it with `jax.export` (StableHLO).
"""

import functools
import inspect
import math
import os
from collections.abc import Callable, Sequence
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from equivlab import checks, gconv, groups
from equivlab.gconv.conv import wrap_pad
from equivlab.nn import layers
from equivlab.ops import convolution

__all__ = [
  "ExportedNetwork",
  "batch_norm_affine",
  "export",
  "export_p4cnn",
  "fold_batch_norm",
  "group_layer_params",
  "lifting_layer_params",
  "load_inference",
  "save_inference",
]

_CONVS = (layers.LiftingConv, layers.GroupConv)
# Relative float error of a whole network's outputs, by dtype.
_RTOL = {np.dtype(np.float64): 1e-10, np.dtype(np.float32): 1e-4}
_MISMATCH = "variables do not match the model"
_SIZES = (32, 28, 64, 128)  # spatial sizes tried when no input shape is given


# --------------------------------------------------------------------------
# Parameters, layer by layer: pure functions.


def lifting_layer_params(
  kernel: Any, bias: Any | None, group: str = "p4"
) -> tuple[np.ndarray, np.ndarray]:
  """A lifting conv's plain `(kernel [k, k, Cin, F * G], bias [F * G])`,
  channel `o * G + g`, from `kernel [k, k, Cin, F]` and `bias [F]` (or
  None): a plain correlation gives `lifting_conv` as `[N, H', W', F * G]`.
  """
  bank = np.asarray(gconv.lifting_filter_bank(kernel, group))
  return bank, _repeat_bias(bias, kernel, groups.group_order(group))


def group_layer_params(
  kernel: Any, bias: Any | None, group: str = "p4"
) -> tuple[np.ndarray, np.ndarray]:
  """A group conv's plain `(kernel [k, k, Cin * G, F * G], bias [F * G])`
  from `kernel [k, k, Cin, G, F]` and `bias [F]` (or None), for maps laid
  out as `[N, H, W, C * G]` (channel `c * G + g`)."""
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


def batch_norm_affine(
  norm: dict[str, Any], stats: dict[str, Any], *, epsilon: float
) -> tuple[np.ndarray, np.ndarray]:
  """An eval-mode batch norm as `y = x * mul + add`, per channel, float64.

  From the parameters {"scale": [C], "bias": [C]} and running statistics
  {"mean": [C], "var": [C]}: `mul = scale / sqrt(var + epsilon)`,
  `add = bias - mean * mul`.

  Raises:
    ValueError: for missing entries, shapes that differ, or a running
      variance below zero (statistics no batch can give).
  """
  need = {"scale": norm, "bias": norm, "mean": stats, "var": stats}
  missing = [k for k, tree in need.items() if k not in tree]
  if missing:
    raise ValueError(
      f"batch norm variables lack {missing}: expected params "
      f"{{'scale', 'bias'}} and batch_stats {{'mean', 'var'}}, got params "
      f"{sorted(norm)} and batch_stats {sorted(stats)}."
    )
  v = {k: np.asarray(tree[k], np.float64) for k, tree in need.items()}
  shapes = {k: a.shape for k, a in v.items()}
  if len(set(shapes.values())) != 1 or v["scale"].ndim != 1:
    raise ValueError(
      f"batch norm variables must all be [C] vectors of one length, got "
      f"shapes {shapes}."
    )
  if np.any(v["var"] < 0) or not np.all(np.isfinite(v["var"])):
    raise ValueError(
      f"batch norm running variance must be finite and >= 0, got "
      f"min {np.min(v['var'])!r} (var {v['var']})."
    )
  mul = v["scale"] / np.sqrt(v["var"] + epsilon)
  return mul, v["bias"] - v["mean"] * mul


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
    kernel, bias: a plain kernel `[k, k, Cin, F * G]` and bias `[F * G]`.
    norm, stats, epsilon: the batch norm's, as `batch_norm_affine`.
    order: G.

  Returns:
    The folded `(kernel, bias)`.

  Raises:
    ValueError: as `batch_norm_affine`, or when F * G is not the kernel's
      output width.
  """
  mul, add = batch_norm_affine(norm, stats, epsilon=epsilon)
  kernel, bias = np.asarray(kernel), np.asarray(bias)
  if mul.size * order != kernel.shape[-1]:
    raise ValueError(
      f"the batch norm has {mul.size} channels but the convolution before "
      f"it has {kernel.shape[-1]} outputs ({kernel.shape[-1] // order} "
      f"G-channels of {order}): were the variables made by another model?"
    )
  mul, add = np.repeat(mul, order), np.repeat(add, order)
  dtype = kernel.dtype
  new_kernel = (kernel.astype(np.float64) * mul).astype(dtype)
  new_bias = (bias.astype(np.float64) * mul + add).astype(dtype)
  return new_kernel, new_bias


# --------------------------------------------------------------------------
# The exported network.


def _path(module: nn.Module) -> str:
  return "/".join(str(p) for p in module.path)


def _is_batch_norm(module) -> bool:
  return isinstance(module, layers.Normalization) and module.kind == "batch"


def _plain_conv(module, x, kernel, bias):
  """A `LiftingConv` / `GroupConv` call as one plain convolution."""
  order = groups.group_order(module.group)
  if isinstance(module, layers.GroupConv):
    x = x.reshape(*x.shape[:3], x.shape[3] * x.shape[4])
  if kernel.shape[2:] != (x.shape[-1], module.features * order):
    raise ValueError(
      f"exported variables of {_path(module)!r} do not match the module: "
      f"kernel {kernel.shape} on an input of {x.shape[-1]} channels (shape "
      f"{x.shape}); were they exported from another network?"
    )
  x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=module.dtype)
  padding = gconv.normalize_padding(module.padding)
  stride, dilation = module.strides, module.kernel_dilation
  if padding == "CIRCULAR":
    x, padding = wrap_pad(x, kernel.shape[0], stride, dilation), "VALID"
  s, d = (stride, stride), (dilation, dilation)
  y = convolution.conv2d(
    x, kernel, stride=s, padding=padding, dilation=d, impl=module.conv_impl
  )
  y = y + bias.reshape(1, 1, 1, -1)
  return y.reshape(*y.shape[:3], -1, order)


class ExportedNetwork(nn.Module):
  """A network of equivlab layers run as plain convolutions (eval only).

  Runs `network` in its own variable scope (the exported variables keep
  its paths), each group conv as one `conv2d` with its expanded bank, each
  batch norm as its affine map or, where `folded` names it, as nothing.
  Only `apply`, with `export`'s variables.

  Attributes:
    network: the group network.
    folded: paths of the batch norms folded into a convolution.
    call_kwargs: keyword arguments for `network` (`(("train", False),)`).
  """

  network: nn.Module
  folded: tuple[str, ...] = ()
  call_kwargs: tuple[tuple[str, Any], ...] = ()

  def setup(self):
    nn.share_scope(self, self.network)

  def __call__(self, x: jax.Array) -> Any:
    """The network's eval-mode output at `x`."""
    # A partial, not a method: the module's own methods are intercepted.
    with nn.intercept_methods(functools.partial(_swap, self.folded)):
      return self.network(x, **dict(self.call_kwargs))


def _swap(folded, next_fun, args, kwargs, context):
  """The interceptor of `ExportedNetwork`: group layers as plain ones."""
  module = context.module
  if context.method_name != "__call__":
    return next_fun(*args, **kwargs)
  if isinstance(module, _CONVS):
    p = module.variables.get("params", {})
    if "kernel" not in p:
      raise ValueError(
        f"exported variables lack the kernel of {_path(module)!r}: use the "
        f"variables export returned."
      )
    return _plain_conv(module, args[0], p["kernel"], p["bias"])
  if _is_batch_norm(module):
    if _path(module) in folded:
      return args[0]
    return _plain_affine(module, args[0])
  return next_fun(*args, **kwargs)


def _plain_affine(module, x):
  """An exported batch norm: `x * mul + add` per channel."""
  p = module.variables.get("params", {})
  channels = x.shape[-2] if x.ndim == 5 else x.shape[-1]
  if "mul" not in p or p["mul"].shape != (channels,):
    got = {k: np.shape(v) for k, v in p.items()}
    raise ValueError(
      f"exported variables of {_path(module)!r} do not match the module: "
      f"expected mul and add of shape ({channels},) for an input of shape "
      f"{x.shape}, got {got}."
    )
  shape = (1, 1, 1, -1, 1) if x.ndim == 5 else (1,) * (x.ndim - 1) + (-1,)
  mul, add = p["mul"].reshape(shape), p["add"].reshape(shape)
  return (x * mul + add).astype(module.dtype or x.dtype)


# --------------------------------------------------------------------------
# Tracing the group network once: which layer runs where.


def _call_kwargs(model) -> tuple[tuple[str, Any], ...]:
  params = inspect.signature(type(model).__call__).parameters
  return (("train", False),) if "train" in params else ()


class _NotExportable(ValueError):
  """A model export refuses whatever its input."""


def _own_variables(module) -> bool:
  """Whether the bound `module` holds variables itself (not its children)."""
  trees = module.variables.values()
  return any(not hasattr(v, "items") for t in trees for v in t.values())


def _trace(model, variables, x, kwargs) -> list[tuple]:
  """`(module, path, input, output, kwargs, owns_variables)` of every
  submodule `__call__`, in execution order (abstract: `jax.eval_shape`)."""
  calls = []

  def record(next_fun, args, kw, context):
    module = context.module
    if context.method_name != "__call__" or not module.path:
      return next_fun(*args, **kw)
    if _is_batch_norm(module) and not kw.get(
      "use_running_average", module.use_running_average
    ):
      raise _NotExportable(
        f"batch norm {_path(module)!r} normalises with the batch's "
        f"statistics in the exported call: export needs eval mode."
      )
    x, own = (args[0] if args else None), _own_variables(module)
    out = next_fun(*args, **kw)
    calls.append((module, tuple(module.path), x, out, kw, own))
    return out

  def run(a):
    with nn.intercept_methods(record):
      return model.apply(variables, a, **kwargs)

  try:
    jax.eval_shape(run, x)
  except (flax.errors.FlaxError, KeyError) as e:
    raise ValueError(
      f"{_MISMATCH} {type(model).__name__} (widths, "
      f"layers or collections differ): {e}"
    ) from e
  return calls


def _input_shapes(variables, input_shape):
  """Input shapes to trace with: the given one, or guesses from the kernels
  (image kernels first, their input channels, a few square sizes)."""
  if input_shape is not None:
    checks.check_ints("input_shape", list(input_shape), minimum=1)
    return [tuple(int(d) for d in input_shape)]
  kernels = [
    np.shape(a)
    for p, a in jax.tree_util.tree_leaves_with_path(variables.get("params", {}))
    if getattr(p[-1], "key", None) == "kernel"
  ]
  shapes = []
  for rank in (4, 5, 2):
    for k in kernels:
      if len(k) != rank:
        continue
      guesses = (
        [(1, k[0])]
        if rank == 2
        else [(1, n, n, *k[2 : rank - 1]) for n in _SIZES]
      )
      shapes += [g for g in guesses if g not in shapes]
  return shapes


def _traced(model, variables, input_shape, kwargs):
  """The trace on the first input shape the model accepts, and that x."""
  shapes = _input_shapes(variables, input_shape)
  for i, shape in enumerate(shapes):
    x = jnp.asarray(np.random.default_rng(0).standard_normal(shape), "float32")
    try:
      return _trace(model, variables, x, kwargs), x
    except Exception as e:
      shape_error = isinstance(e.__cause__, flax.errors.ScopeParamShapeError)
      if input_shape is not None or isinstance(e, _NotExportable):
        raise
      if _MISMATCH in str(e) and not shape_error:
        raise
      if i == len(shapes) - 1:
        raise ValueError(
          f"export could not guess an input for {type(model).__name__} "
          f"(tried {shapes}; the last gave {type(e).__name__}: {e}): pass "
          f"input_shape=(N, H, W, C)."
        ) from e
  raise ValueError("export found no kernel: pass input_shape=(N, H, W, C).")


# --------------------------------------------------------------------------
# Whole networks.


def _set(tree: dict, path: tuple[str, ...], value) -> None:
  for p in path[:-1]:
    tree = tree.setdefault(p, {})
  tree[path[-1]] = value


def _drop(tree: dict, path: tuple[str, ...]) -> None:
  """Removes `tree[path]` and every dict it leaves empty."""
  if path[0] in tree and len(path) > 1:
    _drop(tree[path[0]], path[1:])
  if path[0] in tree and (len(path) == 1 or not tree[path[0]]):
    del tree[path[0]]


def _unfreeze(variables) -> dict:
  if not hasattr(variables, "items"):
    raise ValueError(
      f"variables must be a dict of collections ({{'params': ...}}), got "
      f"{type(variables).__name__}."
    )
  return jax.tree.map(np.asarray, flax.core.unfreeze(variables))


def _get(tree: dict, path: tuple[str, ...]) -> dict:
  for p in path:
    tree = tree.get(p, {}) if hasattr(tree, "get") else {}
  return tree


def _export_conv(module, path, out):
  p = _get(out["params"], path)
  to_plain = (
    lifting_layer_params
    if isinstance(module, layers.LiftingConv)
    else group_layer_params
  )
  kernel, bias = to_plain(p["kernel"], p.get("bias"), module.group)
  if kernel.shape[-1] != module.features * groups.group_order(module.group):
    raise ValueError(
      f"variables of {'/'.join(path)!r} ({type(module).__name__}"
      f"(features={module.features})) hold a kernel {np.shape(p['kernel'])}"
      f": widths do not match the module."
    )
  _set(out["params"], path, {"kernel": kernel, "bias": bias})
  return kernel, bias


def _check_exportable(module, path: str, own: bool) -> None:
  # Other normalisations compute from the sample: they run as they are.
  kept = isinstance(module, layers.Normalization)
  if own and not kept and not type(module).__module__.startswith("flax."):
    raise TypeError(
      f"cannot export layer {path!r} of type {type(module).__name__}: a "
      f"layer with its own variables must be an equivlab layer (LiftingConv, "
      f"GroupConv, batch norm, ...) or a flax.linen layer, so that export "
      f"knows how its parameters are tied over the group."
    )


def _plan(calls, variables, fold: bool):
  """The exported variables and the folded batch norms' paths."""
  out = _unfreeze(variables)
  out.setdefault("params", {})
  last_conv, folded, done = None, [], set()
  for module, path, x, y, kw, own in calls:
    name = "/".join(path)
    if path in done:  # a layer called again: exported once, never folded
      last_conv = None
    elif isinstance(module, _CONVS):
      last_conv = (path, y, *_export_conv(module, path, out))
    elif _is_batch_norm(module):
      _export_norm(module, x, kw, name, path, out, last_conv, folded, fold)
    else:
      _check_exportable(module, name, own)
    done.add(path)
  return out, tuple(folded)


def _export_norm(module, x, kw, name, path, out, last_conv, folded, fold):
  norm = _get(out["params"], path)
  stats = _get(out.get("batch_stats", {}), path)
  try:
    if fold and last_conv is not None and last_conv[1] is x:
      conv_path, _, kernel, bias = last_conv
      kernel, bias = fold_batch_norm(
        kernel, bias, norm, stats, order=x.shape[-1], epsilon=module.epsilon
      )
      _set(out["params"], conv_path, {"kernel": kernel, "bias": bias})
      folded.append(name)
      _drop(out["params"], path)
    else:
      mul, add = batch_norm_affine(norm, stats, epsilon=module.epsilon)
      dt = np.dtype(module.param_dtype)
      _set(out["params"], path, {"mul": mul.astype(dt), "add": add.astype(dt)})
  except ValueError as e:
    raise ValueError(f"batch norm {name!r}: {e}") from e
  _drop(out.get("batch_stats", {}), path)
  if "batch_stats" in out and not out["batch_stats"]:
    del out["batch_stats"]


def _max_error(model, variables, plain, plain_vars, x, kwargs) -> float:
  """The largest difference of the outputs, in units of float error."""
  want = jax.tree.leaves(model.apply(variables, x, **kwargs))
  got = jax.tree.leaves(plain.apply(plain_vars, x))
  worst = 0.0 if len(got) == len(want) else math.inf
  for g, w in zip(got, want, strict=False):
    rtol = max(_RTOL.get(np.dtype(a.dtype), 1e-4) for a in (g, w))
    g, w = np.asarray(g, np.float64), np.asarray(w, np.float64)
    if g.shape != w.shape:
      return math.inf
    scale = rtol * max(float(np.max(np.abs(w), initial=0.0)), 1e-30)
    worst = max(worst, float(np.max(np.abs(g - w), initial=0.0)) / scale)
  return worst


def export(
  model: nn.Module,
  variables: Any,
  *,
  input_shape: Sequence[int] | None = None,
  check_on: Any | None = None,
) -> tuple[ExportedNetwork, dict[str, Any]]:
  """The plain network that computes a group network's eval-mode outputs.

  For any flax module whose group layers are equivlab's (module
  docstring); checked against the model on a random input.

  Args:
    model: the group network; called with `train=False` if it takes `train`.
    variables: its variables, {"params": ..., "batch_stats": ...}.
    input_shape: the shape to trace with, e.g. `(1, 28, 28, 1)`; None:
      guesses from the kernels (square sizes 32, 28, 64, 128).
    check_on: optional inputs on which the outputs are compared as well.

  Returns:
    `(exported, exported_variables)`, for `exported.apply(variables, x)`.

  Raises:
    TypeError: for a model that is no flax module, or a layer that cannot
      be exported (naming its path and type).
    ValueError: for variables that do not match the model (widths, missing
      statistics, a negative variance), a batch norm in train mode.
    RuntimeError: if the exported outputs differ by more than float error.
  """
  if not isinstance(model, nn.Module):
    raise TypeError(
      f"model must be a flax.linen Module, got {type(model).__name__}."
    )
  kwargs = dict(_call_kwargs(model))
  calls, x = _traced(model, variables, input_shape, kwargs)
  error = math.inf
  for fold in (True, False):  # folding needs the conv's output unshared
    plain_vars, folded = _plan(calls, variables, fold)
    plain = ExportedNetwork(model, folded, tuple(kwargs.items()))
    plain_vars = jax.tree.map(jnp.asarray, plain_vars)
    error = _max_error(model, variables, plain, plain_vars, x, kwargs)
    if check_on is not None and error <= 1:
      error = _max_error(model, variables, plain, plain_vars, check_on, kwargs)
    if error <= 1:
      return plain, plain_vars
  raise RuntimeError(
    f"the exported network's outputs differ from {type(model).__name__}'s "
    f"by {error:.1f} times float error: does a layer act on the group in a "
    f"way equivlab.nn.export does not know?"
  )


def export_p4cnn(
  model: layers.P4CNN, variables: Any, *, check_on: Any | None = None
) -> tuple[ExportedNetwork, dict[str, Any]]:
  """`export` for a `layers.P4CNN` / `P4MCNN` (traced on 28x28 images);
  a TypeError for any other model."""
  if not isinstance(model, layers.P4CNN):
    raise TypeError(
      f"model must be a layers.P4CNN or P4MCNN (models 'p4cnn', "
      f"'p4cnn_rotpool', 'p4mcnn'), got {type(model).__name__}."
    )
  shape = (1, model.MIN_SIZE, model.MIN_SIZE, 1)
  return export(model, variables, input_shape=shape, check_on=check_on)


# --------------------------------------------------------------------------
# A deployable artifact: jax.export (StableHLO).


def save_inference(
  model: nn.Module,
  variables: Any,
  path: str | os.PathLike,
  *,
  input_shape: Sequence[int],
  batch_polymorphic: bool = True,
  dtype: Any = jnp.float32,
  platforms: Sequence[str] | None = None,
) -> Any:
  """Serialises the exported network's inference function to `path`.

  `x -> outputs` of `export`'s network, variables baked in, as portable
  StableHLO that runs with jax alone::

    exported = jax.export.deserialize(open(path, "rb").read())
    logits = exported.call(x)

  Compatibility, as jax states it for `jax.export`: an artifact can be
  compiled and run by a jaxlib up to 6 months newer than the one that saved
  it (backward compatibility) and up to 3 weeks older (forward
  compatibility); what counts is when the jaxlib releases were built. It
  runs on the platforms it was saved for.

  Args:
    model, variables: the group network and its variables, as `export`.
    path: the file to write.
    input_shape: `(N, H, W, C)` (or the model's own input shape).
    batch_polymorphic: any batch size (a symbolic leading dimension);
      False: only `input_shape[0]`.
    dtype: the input's dtype.
    platforms: e.g. `("cpu", "cuda")`; None: the default backend.

  Returns:
    The `jax.export.Exported` that was written.

  Raises:
    TypeError / ValueError: for a bad `input_shape`, or as `export`.
  """
  checks.check_ints("input_shape", list(input_shape), minimum=1)
  if not isinstance(batch_polymorphic, bool):
    raise TypeError(
      f"batch_polymorphic must be a bool, got {batch_polymorphic!r}."
    )
  shape = tuple(int(d) for d in input_shape)
  plain, plain_vars = export(model, variables, input_shape=shape)
  if batch_polymorphic:
    dims = ", ".join(["b", *(str(d) for d in shape[1:])])
    spec_shape = jax.export.symbolic_shape(dims)
  else:
    spec_shape = shape
  spec = jax.ShapeDtypeStruct(spec_shape, jnp.dtype(dtype))
  infer = jax.jit(lambda x: plain.apply(plain_vars, x))
  exported = jax.export.export(infer, platforms=platforms)(spec)
  with open(path, "wb") as f:
    f.write(exported.serialize())
  return exported


def load_inference(path: str | os.PathLike) -> Callable[[Any], Any]:
  """The inference function `save_inference` wrote: `x -> outputs`.

  Raises:
    FileNotFoundError / ValueError: if `path` does not exist / is not a
      `jax.export` artifact.
  """
  try:
    with open(path, "rb") as f:
      exported = jax.export.deserialize(bytearray(f.read()))
  except OSError:
    raise
  except Exception as e:  # noqa: BLE001 (flatbuffers errors vary)
    raise ValueError(
      f"{os.fspath(path)!r} is not a jax.export artifact (as save_inference "
      f"writes): {type(e).__name__}: {e}"
    ) from e

  def infer(x: Any) -> Any:
    return exported.call(x)

  infer.exported = exported
  return infer
