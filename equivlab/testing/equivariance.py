"""Equivariance errors and assertions for any function of images or maps.

Cohen & Welling, "Group Equivariant Convolutional Networks" (ICML 2016):
a network `fn` is equivariant when `fn(g x) == g fn(x)` for every element g,
where g acts on the input and on the output in the way each carries (an
image, a group feature map, or not at all for invariant outputs). The
paper proves it for the G-correlation; these functions measure it.

Every group action is applied in NumPy on the host with `equivlab.groups`
(the same code that defines the actions), so only `fn` runs on the
accelerator; pass a jitted `fn` to compile it once for all elements.

Precision. `fn` is evaluated under `jax.default_matmul_precision("highest")`:
an equivariance check measures the network's structure, and on NVIDIA GPUs
the default float32 matmul and convolution precision is TF32 (10 mantissa
bits), whose rounding (about 1e-3 of the output) differs between `fn(g x)`
and `g fn(x)` and would exceed the float32 tolerance. On CPU this changes
nothing. An operation with an explicit `precision=` keeps its own.
"""

import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from equivlab import checks, groups

GROUPS = ("p4", "p4m")
INPUT_ACTIONS = ("image", "p4", "p4m")
ACTIONS = (*INPUT_ACTIONS, "invariant")

# Default relative tolerances by dtype: a few hundred ulps of the output's
# largest value in float64, looser where rounding grows with depth.
_DEFAULT_RTOL = {
  np.dtype(np.float64): 1e-10,
  np.dtype(np.float32): 1e-4,
  np.dtype(np.float16): 1e-2,
  np.dtype(jnp.bfloat16): 5e-2,
}
_ORDERS = {"p4": 4, "p4m": 8}

ElementLike = groups.Element | int | str


class Measurement(NamedTuple):
  """What one measurement saw: errors and what they are relative to.

  Attributes:
    errors: element name -> relative error (see `equivariance_error`).
    dtype: the least precise floating dtype of the input and the output
      (None if neither is floating point).
    scale: `max |fn(x)|`, the denominator of every error.
  """

  errors: dict[str, float]
  dtype: Any
  scale: float


def element_name(g: groups.Element) -> str:
  """A readable name: "identity", "rot 90", "mirror then rot 90",
  "shift (2, 3)", "mirror then rot 180 then shift (1, 0)".

  The order is the order of application (`groups.Element` is mirror, then
  rotate, then translate).
  """
  g = groups.compose(groups.identity(), g)  # validates and reduces mod 4
  parts = ["mirror"] if g.mirror else []
  if g.rotation:
    parts.append(f"rot {90 * g.rotation}")
  if g.translation != (0, 0):
    parts.append(f"shift ({g.translation[0]}, {g.translation[1]})")
  return " then ".join(parts) or "identity"


def default_rtol(*dtypes: Any) -> float:
  """The default relative tolerance for outputs computed in `dtypes`.

  The least precise floating dtype decides: 1e-10 for float64, 1e-4 for
  float32, 1e-2 for float16, 5e-2 for bfloat16; 0 (exact) when no dtype is
  floating point.
  """
  dtype = _least_precise(dtypes)
  return 0.0 if dtype is None else _DEFAULT_RTOL.get(np.dtype(dtype), 1e-4)


def _least_precise(dtypes):
  floats = [
    np.dtype(d) for d in dtypes if jnp.issubdtype(np.dtype(d), jnp.floating)
  ]
  if not floats:
    return None
  return max(floats, key=lambda d: _DEFAULT_RTOL.get(d, 1e-4))


def resolve_elements(
  group: str,
  elements: Sequence[ElementLike] | None = None,
  shifts: Sequence[Sequence[int]] | None = None,
) -> list[groups.Element]:
  """The elements a check visits, in order and without repeats.

  Args:
    group: "p4" or "p4m".
    elements: None for every non-identity roto-reflection of `group`, or a
      sequence of `groups.Element`s (translations allowed), flat indices
      `m * 4 + r`, or names as `element_name` writes them ("rot 90").
    shifts: circular translations `(dy, dx)`; each is checked alone and
      composed with each of `elements` ("rot 90 then shift (2, 3)").

  Returns:
    A non-empty list of `groups.Element`.

  Raises:
    TypeError / ValueError: for an unknown element, an element outside
      `group` (a mirror in p4), a malformed shift, or nothing to check.
  """
  checks.check_choice("group", group, GROUPS)
  names = {element_name(g): g for g in groups.elements(group)}
  if elements is None:
    base = list(groups.elements(group)[1:])
  else:
    if isinstance(elements, str | groups.Element) or not isinstance(
      elements, Sequence
    ):
      raise TypeError(
        f"elements must be a sequence of groups.Element, flat indices or "
        f"names such as 'rot 90', got {elements!r}."
      )
    base = [_one_element(group, g, names) for g in elements]
  if shifts is not None and (
    isinstance(shifts, str) or not isinstance(shifts, Sequence | np.ndarray)
  ):
    raise TypeError(f"shifts must be a sequence of (dy, dx), got {shifts!r}.")
  moved = []
  for i, shift in enumerate(() if shifts is None else shifts):
    if isinstance(shift, str) or not isinstance(shift, Sequence | np.ndarray):
      raise TypeError(f"shifts[{i}] must be a pair (dy, dx), got {shift!r}.")
    if len(shift) != 2:
      raise ValueError(f"shifts[{i}] must be a pair (dy, dx), got {shift!r}.")
    checks.check_ints(f"shifts[{i}]", list(shift))
    if tuple(shift) == (0, 0):
      raise ValueError(
        f"shifts[{i}] is (0, 0), the identity, which checks nothing: give "
        f"non-zero shifts."
      )
    t = groups.Element(0, 0, (int(shift[0]), int(shift[1])))
    moved += [t] + [groups.compose(t, g) for g in base]
  unique = {element_name(g): g for g in [*base, *moved]}
  if not unique:
    raise ValueError(
      f"nothing to check: elements={elements!r} and shifts={shifts!r} give "
      f"no group element."
    )
  return list(unique.values())


def _one_element(group, g, names):
  if isinstance(g, str):
    if g not in names:
      raise ValueError(
        f"unknown element name {g!r} for {group}; known: {sorted(names)}."
      )
    return names[g]
  if checks.is_int(g):
    return groups.element(group, g)
  if not isinstance(g, groups.Element):
    raise TypeError(
      f"elements must hold groups.Element, flat indices or names, got "
      f"{g!r} of type {type(g).__name__}."
    )
  g = groups.compose(groups.identity(), g)
  if g.mirror and group == "p4":
    raise ValueError(
      f"{element_name(g)!r} mirrors, so it is not in p4; use group='p4m'."
    )
  return g


def check_actions(
  group: str,
  input: str,  # noqa: A002 (the pinned keyword)
  output: str,
  elements: Sequence[groups.Element],
) -> None:
  """Raises ValueError for an unknown action or a mirror on a p4 map."""
  checks.check_choice("input", input, INPUT_ACTIONS)
  checks.check_choice("output", output, ACTIONS)
  mirrors = [element_name(g) for g in elements if g.mirror]
  for name, action in (("input", input), ("output", output)):
    if action == "p4" and mirrors:
      raise ValueError(
        f"{name}='p4' maps have 4 orientations and cannot be mirrored, but "
        f"the elements include {mirrors[0]!r}: use {name}='p4m', or "
        f"group='p4' (rotations only)."
      )


def check_array(x: Any, action: str, name: str) -> None:
  """Raises ValueError unless `x` suits `action` (rank, group axis, square)."""
  shape = np.shape(x)
  if action == "invariant":
    return
  rank = 4 if action == "image" else 5
  layout = "[N, H, W, C]" if rank == 4 else f"[N, H, W, C, {_ORDERS[action]}]"
  if len(shape) != rank:
    raise ValueError(
      f"{name} must be {layout} for the {action!r} action, got shape {shape}."
    )
  if rank == 5 and shape[-1] != _ORDERS[action]:
    raise ValueError(
      f"{name} must have a group axis (last) of size {_ORDERS[action]} for "
      f"the {action!r} action, got shape {shape}."
    )
  if shape[1] != shape[2]:
    raise ValueError(
      f"{name} must be square (H == W) to be rotated, got shape {shape}."
    )


def _act(g, a, action):
  if action == "invariant":
    return a
  if action == "image":
    return groups.act_on_image(g, a)
  return groups.act_on_map(g, a)


def relative_error(actual: Any, expected: Any) -> float:
  """`max |actual - expected| / max |expected|`, in float64.

  0 when both are zero everywhere; inf when the shapes differ or only
  `expected` is zero; NaN when either holds a NaN.
  """
  actual = np.asarray(actual, np.float64)
  expected = np.asarray(expected, np.float64)
  if actual.shape != expected.shape:
    return math.inf
  if actual.size == 0:
    return 0.0
  diff = float(np.max(np.abs(actual - expected)))
  scale = float(np.max(np.abs(expected)))
  if math.isnan(diff) or math.isnan(scale):
    return math.nan
  if diff == 0.0:
    return 0.0
  return diff / scale if scale > 0 else math.inf


def _as_output(y, what):
  if not hasattr(y, "shape") or not hasattr(y, "dtype"):
    raise TypeError(
      f"fn must return one array, got {type(y).__name__} from {what}; wrap "
      f"it, e.g. lambda x: model.apply(v, x, mutable=['batch_stats'])[0]."
    )
  return np.asarray(y)


def measure(
  fn: Callable[[Any], Any],
  x: Any,
  *,
  group: str = "p4",
  input: str = "image",  # noqa: A002 (the pinned keyword)
  output: str = "p4",
  elements: Sequence[ElementLike] | None = None,
  shifts: Sequence[Sequence[int]] | None = None,
) -> Measurement:
  """`equivariance_error` with the output's dtype and scale (see there)."""
  if not callable(fn):
    raise TypeError(f"fn must be callable, got {fn!r}.")
  elems = resolve_elements(group, elements, shifts)
  check_actions(group, input, output, elems)
  check_array(x, input, "x")
  to_fn = jnp.asarray if isinstance(x, jax.Array) else (lambda a: a)
  host = np.asarray(x)
  with jax.default_matmul_precision("highest"):
    y = _as_output(fn(x), "fn(x)")
    check_array(y, output, "fn(x) (the output)")
    errors = {}
    for g in elems:
      got = _as_output(fn(to_fn(_act(g, host, input))), "fn(g x)")
      errors[element_name(g)] = relative_error(got, _act(g, y, output))
  scale = float(np.max(np.abs(y.astype(np.float64)))) if y.size else 0.0
  return Measurement(errors, _least_precise((host.dtype, y.dtype)), scale)


def equivariance_error(
  fn: Callable[[Any], Any],
  x: Any,
  *,
  group: str = "p4",
  input: str = "image",  # noqa: A002 (the pinned keyword)
  output: str = "p4",
  elements: Sequence[ElementLike] | None = None,
  shifts: Sequence[Sequence[int]] | None = None,
) -> dict[str, float]:
  """Relative equivariance errors of `fn` at `x`, one per group element.

  For each element g: `max |fn(g x) - g fn(x)| / max |g fn(x)|`, with g
  acting on the input as `input` says and on the output as `output` says.

  Args:
    fn: a function of one array, e.g. `functools.partial(model.apply,
      variables)` or `jax.jit(lambda x: gconv.lifting_conv(x, w))`.
    x: the input: images `[N, H, W, C]` ("image"), or group maps
      `[N, H, W, C, 4]` ("p4") or `[N, H, W, C, 8]` ("p4m"); square (H ==
      W). NumPy in, NumPy to `fn`; a jax array in, jax arrays to `fn`.
    group: "p4" (rotations by 90 degrees) or "p4m" (and mirrors).
    input: how an element acts on `x`: "image" rotates (and mirrors) the
      (H, W) axes; "p4" / "p4m" also permute the group axis as
      `equivlab.groups.act_on_map` (and `gconv.rotate_p4`) define it.
    output: how an element acts on `fn(x)`: "image", "p4", "p4m", or
      "invariant" (not at all: logits, pooled features).
    elements: None for every non-identity element of `group`; or a
      sequence of `groups.Element` (translations allowed), flat indices
      `m * 4 + r` or names ("rot 90", "mirror then rot 90").
    shifts: circular translations `(dy, dx)` of the (H, W) axes, each
      checked alone ("shift (2, 3)") and after each element ("rot 90 then
      shift (2, 3)").

  Returns:
    A dict from element name (`element_name`) to relative error (a float;
    0.0 for an exact match, inf if the shapes differ, NaN for NaN outputs),
    in the order the elements were visited.

  Raises:
    TypeError: if `fn` is not callable or does not return one array, or an
      element or shift is of the wrong kind.
    ValueError: unknown group or action, `x` of the wrong rank, group axis
      or not square, a mirror acting on a p4 map, nothing to check.
  """
  return measure(
    fn,
    x,
    group=group,
    input=input,
    output=output,
    elements=elements,
    shifts=shifts,
  ).errors


def _describe(errors: dict[str, float], limit: int = 8) -> str:
  ranked = sorted(errors.items(), key=lambda kv: -_key(kv[1]))
  shown = ", ".join(f"{name} {err:.2e}" for name, err in ranked[:limit])
  more = len(ranked) - limit
  return shown + (f", ... ({more} more)" if more > 0 else "")


def _key(err: float) -> float:
  return math.inf if math.isnan(err) else err


def worst(errors: dict[str, float]) -> tuple[str, float]:
  """The element with the largest error (NaN counts as the largest)."""
  return max(errors.items(), key=lambda kv: _key(kv[1]))


def _tolerance(rtol, dtype) -> tuple[float, str]:
  checks.check_number("rtol", rtol, minimum=0.0, allow_none=True)
  if rtol is not None:
    return float(rtol), "given"
  return default_rtol(*([dtype] if dtype is not None else [])), (
    f"default for {np.dtype(dtype).name}" if dtype is not None else "exact"
  )


def check_measurement(
  m: Measurement, rtol: float | None, what: str, subject: str = "fn"
) -> None:
  """Raises AssertionError unless every error of `m` is within `rtol`.

  Args:
    m: a measurement (`measure`).
    rtol: the tolerance; None for `default_rtol` of `m.dtype`.
    what: what was checked, e.g. "p4-equivariant (input 'image', ...)".
    subject: who failed, for the message ("fn", "Block (init, train mode)").
  """
  tol, origin = _tolerance(rtol, m.dtype)
  if m.scale == 0.0:
    raise AssertionError(
      f"{subject} is zero everywhere at x, so every function would pass this "
      f"check: use an input on which {subject} is not zero."
    )
  name, err = worst(m.errors)
  if not err <= tol:  # NaN fails too
    failing = sum(not e <= tol for e in m.errors.values())
    raise AssertionError(
      f"{subject} is not {what}: worst element {name!r} has relative error "
      f"{err:.3e} > rtol {tol:.1e} ({origin}); {failing} of "
      f"{len(m.errors)} elements fail. Errors: {_describe(m.errors)}."
    )


def describe(group: str, input: str, output: str) -> str:  # noqa: A002
  """What a check asserts, for messages: "p4-equivariant (input ...)"."""
  if output == "invariant":
    return f"{group}-invariant (input {input!r})"
  return f"{group}-equivariant (input {input!r}, output {output!r})"


def assert_equivariant(
  fn: Callable[[Any], Any],
  x: Any,
  *,
  group: str = "p4",
  input: str = "image",  # noqa: A002 (the pinned keyword)
  output: str = "p4",
  elements: Sequence[ElementLike] | None = None,
  shifts: Sequence[Sequence[int]] | None = None,
  rtol: float | None = None,
) -> dict[str, float]:
  """Asserts `fn(g x) == g fn(x)` for every element, to `rtol`.

  Args:
    fn, x, group, input, output, elements, shifts: as `equivariance_error`.
    rtol: the largest accepted relative error; None: `default_rtol` of the
      least precise of x's and the output's dtypes (1e-10 in float64, 1e-4
      in float32, 5e-2 in bfloat16). Pass 0.0 to demand bitwise equality.

  Returns:
    The errors, as `equivariance_error`.

  Raises:
    AssertionError: naming the worst element, its error and the tolerance;
      also when `fn(x)` is zero everywhere (the check would prove nothing).
    TypeError / ValueError: for bad arguments, as `equivariance_error`.
  """
  m = measure(
    fn,
    x,
    group=group,
    input=input,
    output=output,
    elements=elements,
    shifts=shifts,
  )
  check_measurement(m, rtol, describe(group, input, output))
  return m.errors


def assert_invariant(
  fn: Callable[[Any], Any],
  x: Any,
  *,
  group: str = "p4",
  input: str = "image",  # noqa: A002 (the pinned keyword)
  output: str = "invariant",
  elements: Sequence[ElementLike] | None = None,
  shifts: Sequence[Sequence[int]] | None = None,
  rtol: float | None = None,
) -> dict[str, float]:
  """Asserts `fn(g x) == fn(x)` for every element, to `rtol`.

  `assert_equivariant` with `output="invariant"` (the only output accepted
  here); the arguments and errors are as there.
  """
  if output != "invariant":
    raise ValueError(
      f"assert_invariant checks output='invariant', got output={output!r}; "
      f"use assert_equivariant for outputs that move."
    )
  return assert_equivariant(
    fn,
    x,
    group=group,
    input=input,
    output=output,
    elements=elements,
    shifts=shifts,
    rtol=rtol,
  )


def assert_not_equivariant(
  fn: Callable[[Any], Any],
  x: Any,
  *,
  group: str = "p4",
  input: str = "image",  # noqa: A002 (the pinned keyword)
  output: str = "p4",
  elements: Sequence[ElementLike] | None = None,
  shifts: Sequence[Sequence[int]] | None = None,
  min_error: float | None = None,
  every: bool = False,
) -> dict[str, float]:
  """Asserts that `fn` is NOT equivariant: a negative control.

  A test suite whose equivariance checks cannot fail proves nothing; a
  control with a known break (a plain convolution, a wrong roll direction)
  must fail them by a clear margin.

  Args:
    fn, x, group, input, output, elements, shifts: as `equivariance_error`
      (`output="invariant"` asserts that `fn` is not invariant).
    min_error: the margin: the error must exceed it. None: the larger of
      1e-2 and ten times `default_rtol` of the dtypes.
    every: demand the margin for every element, not just the worst one.

  Returns:
    The errors, as `equivariance_error`.

  Raises:
    AssertionError: if the largest error (with `every`, any error) is at
      most `min_error`, naming that element and its error.
    TypeError / ValueError: for bad arguments.
  """
  checks.check_number("min_error", min_error, minimum=0.0, allow_none=True)
  m = measure(
    fn,
    x,
    group=group,
    input=input,
    output=output,
    elements=elements,
    shifts=shifts,
  )
  if min_error is None:
    dtypes = [] if m.dtype is None else [m.dtype]
    min_error = max(1e-2, 10 * default_rtol(*dtypes))
  what = describe(group, input, output)
  nans = [name for name, err in m.errors.items() if math.isnan(err)]
  if nans:
    raise AssertionError(
      f"fn gave NaN (at {nans[0]!r}): a negative control must break "
      f"equivariance with finite outputs, not with NaNs."
    )
  if every:
    name, err = min(m.errors.items(), key=lambda kv: kv[1])
    if not err > min_error:
      raise AssertionError(
        f"expected fn to be not {what} under every element, but "
        f"{name!r} has relative error {err:.3e} <= min_error "
        f"{min_error:.1e}. Errors: {_describe(m.errors)}."
      )
    return m.errors
  name, err = worst(m.errors)
  if not err > min_error:
    raise AssertionError(
      f"negative control passed: fn is {what} to within min_error "
      f"{min_error:.1e} (largest relative error {err:.3e}, at {name!r}), "
      f"but it was expected to break. Errors: {_describe(m.errors)}."
    )
  return m.errors
