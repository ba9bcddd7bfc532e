"""Where a network loses its symmetry: equivariance error per layer.

`assert_equivariant` says whether a network is equivariant; when it is not,
`equivariance_report` says which layer broke it. The network runs once on
`x` and once on each transformed input `g x`, with every submodule's output
captured (a flax method interceptor); each output `y` is compared with
`g y` under the action its shape carries:

- a group feature map `[N, H, W, C, G]` (G = 4 or 8) is acted on as p4/p4m;
- an image-like map `[N, H, W, C]` (H == W) as an image;
- a vector `[N, D]` (or a scalar) as invariant;
- anything else (a non-square map, a rank-3 array) is not measured;

and `actions={path: action}` overrides any of them. Rows come in execution
order (a layer's row after those of the layers inside it; the network's own
output last, path ""). The first row whose error is above float error (the
default tolerance of its dtype, `default_rtol`) is the first break. Where
the layer is a convolution or spatial pooling, `gconv.is_exactly_equivariant`
says whether its settings allow exactness, and the report says why not
("stride 2 on an even input ..."). The exactness predictor speaks of
rotations and mirrors; translations by `shifts` are measured but not
predicted.

Cost: one forward pass on `x` and one per element, each returning every
intermediate output, plus the comparisons on the host.
"""

import dataclasses
import functools
import inspect
import math
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from equivlab import checks, gconv
from equivlab.nn import layers
from equivlab.ops import xla_options
from equivlab.testing import equivariance

NOT_MEASURED = "none"
_ACTIONS = (*equivariance.ACTIONS, NOT_MEASURED)


@dataclasses.dataclass(frozen=True)
class Row:
  """One submodule output.

  Attributes:
    path: the module path, "/"-joined ("Block_0/GroupConv_1"); "" for the
      network's own output; `path[i]` for the i-th array of a tuple output;
      `path#2` for a module's second call.
    layer: the module's class name.
    action: how the elements act on it ("image", "p4", "p4m", "invariant",
      or "none": not measured).
    shape: the output's shape.
    error: the worst relative error over the elements (None if not
      measured).
    element: the name of the worst element (None if not measured).
    exact_expected: `gconv.is_exactly_equivariant` for the layer's settings
      (convolutions and spatial max pooling of square inputs); None where it
      does not apply.
    reason: why the predictor says inexact (None where it does not).
  """

  path: str
  layer: str
  action: str
  shape: tuple[int, ...]
  error: float | None
  element: str | None
  exact_expected: bool | None
  reason: str | None


@dataclasses.dataclass(frozen=True)
class Report:
  """What `equivariance_report` returns: rows and the first break.

  Attributes:
    rows: one `Row` per captured output, in execution order.
    group: "p4" or "p4m".
    elements: the names of the elements measured.
    rtol: the float-error tolerance (from the dtype unless given).
    dtype: the dtype name the tolerance is for.
    first_break: the index of the first row above `rtol`, or None.
    why: why the first break happens, or None.
    forward_passes: how many times the network ran (1 + elements).
  """

  rows: tuple[Row, ...]
  group: str
  elements: tuple[str, ...]
  rtol: float
  dtype: str
  first_break: int | None
  why: str | None
  forward_passes: int

  def __iter__(self):
    return iter(self.rows)

  def __len__(self) -> int:
    return len(self.rows)

  def __getitem__(self, key: int | str) -> Row:
    """A row by index or by path."""
    if isinstance(key, str):
      for row in self.rows:
        if row.path == key:
          return row
      raise KeyError(f"no row with path {key!r}; paths: {self.paths}.")
    return self.rows[key]

  @property
  def paths(self) -> list[str]:
    return [row.path for row in self.rows]

  @property
  def broken(self) -> Row | None:
    """The first row above float error, or None."""
    return None if self.first_break is None else self.rows[self.first_break]

  def summary(self) -> str:
    """One sentence: within float error, or the first break and why."""
    if self.broken is None:
      return (
        f"every output is within float error ({self.rtol:.0e}, "
        f"{self.dtype}) under {len(self.elements)} elements of {self.group}."
      )
    row = self.broken
    return (
      f"first break: {row.path or '(output)'} ({row.layer}), error "
      f"{row.error:.2e} at {row.element!r} > float error {self.rtol:.0e} "
      f"({self.dtype}): {self.why}."
    )

  def __str__(self) -> str:
    header = ("#", "path", "layer", "action", "shape", "error", "element")
    lines = [(*header, "exact")]
    for i, r in enumerate(self.rows):
      err = "-" if r.error is None else f"{r.error:.2e}"
      exact = {None: "-", True: "yes", False: "no"}[r.exact_expected]
      mark = " <" if i == self.first_break else ""
      shape = "x".join(map(str, r.shape))
      lines.append(
        (
          str(i),
          r.path or "(output)",
          r.layer,
          r.action,
          shape,
          err,
          r.element or "-",
          exact + mark,
        )
      )
    widths = [max(len(line[j]) for line in lines) for j in range(8)]
    text = [
      "  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True))
      for line in lines
    ]
    return "\n".join([*(t.rstrip() for t in text), self.summary()])

  def to_dict(self) -> dict[str, Any]:
    """JSON-ready: rows as dicts, infinities and NaN as strings."""
    rows = []
    for r in self.rows:
      row = dataclasses.asdict(r)
      row["shape"] = list(r.shape)
      if r.error is not None and not math.isfinite(r.error):
        row["error"] = str(r.error)
      rows.append(row)
    return {
      "group": self.group,
      "elements": list(self.elements),
      "rtol": self.rtol,
      "dtype": self.dtype,
      "first_break": self.first_break,
      "first_break_path": None if self.broken is None else self.broken.path,
      "why": self.why,
      "forward_passes": self.forward_passes,
      "rows": rows,
    }


# --------------------------------------------------------------------------
# The exactness predictor, per layer.


def why_inexact(
  size: int, kernel: int, stride: int = 1, padding: Any = "SAME", dilation=1
) -> str | None:
  """Why `gconv.is_exactly_equivariant` is False for these settings.

  Returns:
    None where it is True, else e.g. "stride 2 on an even input (28x28,
    kernel 3, padding 'VALID'): the windows read rows 0..26 of 0..27, not
    symmetric about the centre".
  """
  if gconv.is_exactly_equivariant(size, kernel, stride, padding, dilation):
    return None
  (lo_h, hi_h), (lo_w, hi_w) = gconv.padding_amounts(
    size, kernel, stride, padding, dilation
  )
  span = gconv.effective_kernel(kernel, dilation)
  out = (size + lo_h + hi_h - span) // stride + 1
  first, last = -lo_h, (out - 1) * stride - lo_h + span - 1
  what = f"({size}x{size}, kernel {kernel}, padding {padding!r})"
  if (lo_h, hi_h) != (lo_w, hi_w):
    return f"padding differs between H and W {what}"
  where = (
    f"the windows read rows {first}..{last} of 0..{size - 1}, not "
    f"symmetric about the centre"
  )
  if stride > 1:
    parity = "even" if size % 2 == 0 else "odd"
    return f"stride {stride} on an {parity} input {what}: {where}"
  return f"asymmetric padding ({lo_h}, {hi_h}) {what}: {where}"


def _predict(module, x) -> tuple[bool | None, str | None]:
  """`(exact_expected, reason)` for a layer called on `x`."""
  if isinstance(module, layers.LiftingConv | layers.GroupConv):
    k, s = module.kernel_size, module.strides
    p, d = module.padding, module.kernel_dilation
  elif isinstance(module, layers.SpatialMaxPool):
    k, s = module.window, module.strides or module.window
    p, d = module.padding, 1
  else:
    return None, None
  shape = np.shape(x)
  if len(shape) < 4 or shape[1] != shape[2]:
    return None, None
  try:
    reason = why_inexact(int(shape[1]), k, s, p, d)
  except (TypeError, ValueError):
    return None, None
  return reason is None, reason


# --------------------------------------------------------------------------
# Capturing every output.


def _default_action(shape, group: str, mirrors: bool) -> str:
  if len(shape) <= 2:
    return "invariant"
  square = len(shape) in (4, 5) and shape[1] == shape[2]
  if len(shape) == 5 and square and shape[-1] in (4, 8):
    action = "p4" if shape[-1] == 4 else "p4m"
    return NOT_MEASURED if action == "p4" and mirrors else action
  if len(shape) == 4 and square:
    return "image"
  return NOT_MEASURED


def _signature(variables, x) -> tuple:
  """What a trace depends on: shapes and dtypes of the arguments."""
  leaves = jax.tree.leaves((variables, x))
  dtype = jax.dtypes.canonicalize_dtype
  return tuple(
    (np.shape(a), str(dtype(getattr(a, "dtype", None) or np.result_type(a))))
    for a in leaves
  )


def _capturing_forward(model, kwargs, mutable, meta):
  """`forward(variables, x) -> [outputs]`; when traced, it records each
  output's metadata in `meta[_signature(variables, x)]`."""

  def forward(variables, x):
    info = meta[_signature(variables, x)] = []
    outs, seen = [], {}

    def record(next_fun, args, kw, context):
      y = next_fun(*args, **kw)
      if context.method_name != "__call__":
        return y
      module = context.module
      path = "/".join(str(p) for p in module.path)
      seen[path] = seen.get(path, 0) + 1
      if seen[path] > 1:
        path = f"{path}#{seen[path]}"
      leaves = jax.tree.leaves(y)
      exact = _predict(module, args[0] if args else None)
      for i, leaf in enumerate(leaves):
        if not hasattr(leaf, "shape"):
          continue
        name = path if len(leaves) == 1 else f"{path}[{i}]"
        info.append((name, type(module).__name__, tuple(leaf.shape), exact))
        outs.append(leaf)
      return y

    with nn.intercept_methods(record):
      if mutable:
        model.apply(variables, x, mutable=mutable, **kwargs)
      else:
        model.apply(variables, x, **kwargs)
    return outs

  return forward


@functools.lru_cache(maxsize=32)
def _forward(model, kwargs, mutable, jit):
  """The capturing forward pass and its metadata list, compiled once per
  model and mode (flax modules hash by their attributes)."""
  meta: dict = {}
  forward = _capturing_forward(model, dict(kwargs), list(mutable), meta)
  return (xla_options.jit(forward, inference=True) if jit else forward), meta


def _check_overrides(actions, paths, group, elements):
  if actions is None:
    return {}
  if not isinstance(actions, Mapping):
    raise TypeError(
      f"actions must map module paths to actions, got {actions!r}."
    )
  unknown = sorted(set(actions) - set(paths))
  if unknown:
    raise ValueError(
      f"actions names paths the model does not have: {unknown}; its paths "
      f"are {paths}."
    )
  for path, action in actions.items():
    checks.check_choice(f"actions[{path!r}]", action, _ACTIONS)
    if action in equivariance.ACTIONS:
      equivariance.check_actions(group, "image", action, elements)
  return dict(actions)


def _worst(errors: dict[str, float]) -> tuple[str, float]:
  return equivariance.worst(errors)


def _why(row: Row, previous: Row | None) -> str:
  if row.element and "shift" in row.element:
    return (
      f"the worst element {row.element!r} is a circular shift, which a "
      f"{row.layer} commutes with only with 'CIRCULAR' padding and stride 1"
    )
  if row.exact_expected is False:
    return row.reason
  if row.layer in ("Conv", "ConvTranspose", "ConvLocal"):
    return (
      f"{row.layer} is a plain flax convolution: its kernel is not tied "
      f"over the group's rotations"
    )
  if row.layer == "Dense" and row.action != "invariant":
    return "a Dense layer mixes positions or orientations"
  before = previous.path or "(output)" if previous else "the input"
  return (
    f"{row.layer} at {row.path or '(output)'} (or array code between it "
    f"and {before}) breaks it; gconv's predictor does not cover this layer"
    if row.exact_expected is None
    else f"{row.layer} is expected exact here: the array code before it, "
    f"after {before}, may break the symmetry"
  )


def _has_kwarg(model, name: str) -> bool:
  return name in inspect.signature(type(model).__call__).parameters


def _call_options(model, variables, train):
  """The keyword arguments and mutable collections of one forward pass."""
  if not isinstance(train, bool):
    raise TypeError(f"train must be a bool, got {train!r}.")
  has_train = _has_kwarg(model, "train")
  if train and not has_train:
    raise ValueError(
      f"train=True asks for train mode, but {type(model).__name__}.__call__ "
      f"takes no 'train' argument: leave train=False."
    )
  kwargs = {"train": train} if has_train else {}
  mutable = tuple(c for c in variables if c != "params") if train else ()
  return kwargs, mutable


def equivariance_report(
  model: nn.Module,
  variables: Any,
  x: Any,
  *,
  group: str = "p4",
  input: str = "image",  # noqa: A002 (the pinned keyword)
  elements: Sequence[Any] | None = None,
  shifts: Sequence[Sequence[int]] | None = None,
  train: bool = False,
  actions: Mapping[str, str] | None = None,
  rtol: float | None = None,
  jit: bool = True,
) -> Report:
  """The equivariance error of every submodule output of `model` at `x`.

  Args:
    model: a flax linen module mapping `x` to outputs.
    variables: its variables.
    x: the input batch: images `[N, H, W, C]` or group maps, square.
    group: "p4" or "p4m".
    input: how the elements act on `x`: "image", "p4" or "p4m".
    elements, shifts: the elements to measure, as `equivariance_error`.
    train: run in train mode (`train=True`, batch statistics from the
      batch; the updated statistics are dropped). The model must take a
      `train` argument; with train=False it gets `train=False` if it does.
    actions: overrides of the action by path, e.g. `{"Dense_0": "none",
      "": "invariant"}` ("none": not measured).
    rtol: the float-error tolerance; None: `default_rtol` of the least
      precise dtype of `x` and the outputs.
    jit: compile the forward pass once for all elements.

  Returns:
    A `Report`: `print(report)` shows the table and the first break;
    `report.broken` is its row and `report.why` the reason.

  Raises:
    TypeError / ValueError: for bad arguments (as `equivariance_error`;
      unknown override paths or actions; train=True for a model without a
      `train` argument).
  """
  if not isinstance(model, nn.Module):
    raise TypeError(
      f"model must be a flax.linen Module, got {type(model).__name__}."
    )
  elems = equivariance.resolve_elements(group, elements, shifts)
  equivariance.check_actions(group, input, "invariant", elems)
  equivariance.check_array(x, input, "x")
  checks.check_number("rtol", rtol, minimum=0.0, allow_none=True)
  kwargs, mutable = _call_options(model, variables, train)
  try:
    forward, meta = _forward(model, tuple(kwargs.items()), mutable, jit)
  except TypeError:  # an unhashable module (a list attribute): no cache
    forward, meta = _forward.__wrapped__(
      model, tuple(kwargs.items()), mutable, jit
    )
  host = np.asarray(x)
  with jax.default_matmul_precision("highest"):
    refs = forward(variables, jnp.asarray(host))
    info = list(meta[_signature(variables, jnp.asarray(host))])
    mirrors = any(g.mirror for g in elems)
    paths = [name for name, *_ in info]
    overrides = _check_overrides(actions, paths, group, elems)
    acts = tuple(
      overrides.get(name, _default_action(shape, group, mirrors))
      for name, _, shape, _ in info
    )
    errors = [{} for _ in info]
    for i, g in enumerate(elems):
      moved = forward(variables, jnp.asarray(equivariance._act(g, host, input)))
      diffs, scales = _compare(acts, tuple(elems), i, moved, refs)
      diffs, scales = np.asarray(diffs), np.asarray(scales)
      for j, action in enumerate(acts):
        if action != NOT_MEASURED:
          errors[j][equivariance.element_name(g)] = _relative(
            float(diffs[j]), float(scales[j])
          )
  dtypes = [np.dtype(r.dtype) for r in refs]
  return _make_report(info, acts, errors, dtypes, host, group, elems, rtol)


def _relative(diff: float, scale: float) -> float:
  """`diff / scale` as `equivariance.relative_error` defines it."""
  if math.isnan(diff) or math.isnan(scale):
    return math.nan
  if diff == 0.0:
    return 0.0
  return diff / scale if scale > 0 else math.inf


@functools.partial(jax.jit, static_argnums=(0, 1))
def _compare(acts, elements, index, moved, refs):
  """`max |y(g x) - g y(x)|` and `max |y(x)|` of every output, on the
  device, for `g = elements[index]`: one program for all the elements (a
  `lax.switch` over their static rot90s, flips and rolls)."""

  def one(g):
    def branch(moved, refs):
      diffs, scales = [], []
      for action, got, ref in zip(acts, moved, refs, strict=True):
        if action == NOT_MEASURED or got.shape != ref.shape:
          bad = action != NOT_MEASURED
          diffs.append(jnp.asarray(jnp.inf if bad else 0.0, jnp.float32))
          scales.append(jnp.asarray(1.0, jnp.float32))
          continue
        ref = jnp.asarray(ref, jnp.promote_types(ref.dtype, jnp.float32))
        diff = jnp.abs(jnp.asarray(got, ref.dtype) - _act(g, ref, action))
        diffs.append(jnp.max(diff, initial=0.0).astype(jnp.float32))
        scales.append(jnp.max(jnp.abs(ref), initial=0.0).astype(jnp.float32))
      return jnp.stack(diffs), jnp.stack(scales)

    return branch

  return jax.lax.switch(index, [one(g) for g in elements], moved, refs)


def _act(g, a, action):
  return a if action == "invariant" else equivariance._act(g, a, action)


def _make_report(info, acts, errors, dtypes, host, group, elems, rtol):
  rows = []
  for (name, layer, shape, (exact, reason)), action, errs in zip(
    info, acts, errors, strict=True
  ):
    element, error = _worst(errs) if errs else (None, None)
    rows.append(Row(name, layer, action, shape, error, element, exact, reason))
  dtypes = [host.dtype, *dtypes]
  floats = [d for d in dtypes if jnp.issubdtype(d, jnp.floating)]
  dtype = max(floats, key=equivariance.default_rtol) if floats else None
  tol = float(rtol) if rtol is not None else equivariance.default_rtol(dtype)
  first = next(
    (
      i
      for i, r in enumerate(rows)
      if r.error is not None and not r.error <= tol
    ),
    None,
  )
  why = None
  if first is not None:
    measured = [r for r in rows[:first] if r.error is not None]
    why = _why(rows[first], measured[-1] if measured else None)
  return Report(
    rows=tuple(rows),
    group=group,
    elements=tuple(equivariance.element_name(g) for g in elems),
    rtol=tol,
    dtype="exact" if dtype is None else np.dtype(dtype).name,
    first_break=first,
    why=why,
    forward_passes=1 + len(elems),
  )
