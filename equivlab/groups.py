"""The wallpaper groups p4 and p4m and their actions on arrays.

Cohen & Welling, "Group Equivariant Convolutional Networks" (ICML 2016):
the G-correlation and the proof of its equivariance.

Elements. An element is `Element(rotation=r, mirror=m, translation=(ty, tx))`
and stands for the map of the pixel grid

    p  ->  t + R^r M^m p,

i.e. first mirror (if `m == 1`), then rotate by `r * 90` degrees, then
translate by `t`. Points `p` are `(row, col)` offsets from the centre of
the (square) image, so rotations turn about the centre. `R` is one
`np.rot90` step on the (H, W) axes and `M` is a left-right mirror (a flip of
the W axis). p4 is the subgroup with `m == 0`.

Flattened group index. The roto-reflection part `(m, r)` of an element has
the flat index `m * 4 + r`: 0..3 are the pure rotations (the whole of p4) and
4..7 are "mirror, then rotate by r". Group feature maps store this index on
their last axis: `[N, H, W, C, 4]` for p4 and `[N, H, W, C, 8]` for p4m.

Composition order. `compose(g, h)` is the map "first h, then g" (function
composition, `g * h = g o h`), so every action here is a left action:

    act_on_image(g, act_on_image(h, x)) == act_on_image(compose(g, h), x)

and the same for `act_on_map`. The product works out to

    (t1, m1, r1) * (t2, m2, r2) = (t1 + R^r1 M^m1 t2, m1 xor m2,
                                   r1 + (-1)^m1 r2 mod 4)

because a mirror conjugates a rotation into its inverse (`M R M = R^-1`).

Actions. On an image `x[N, H, W, C]` the element acts on the pixel grid:
`(g x)(p) = x(g^-1 p)`; rotations turn about the image centre and
translations are cyclic (`np.roll`), so on a square `n x n` image the action
is exact on the torus `Z_n^2`. On a group feature map `f[N, H, W, C, G]`,
which is a function on the group, `(g f)(p, h) = f(g^-1 p, g^-1 h)`: the
spatial axes move as for an image and the group axis is permuted. For p4
this is `roll(rot90(f, r, axes=(1, 2)), r, axis=-1)` (DESIGN.md).
"""

from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from equivlab import checks

GROUP_ORDERS = {"p4": 4, "p4m": 8}

# One rot90 step and the W-axis mirror as matrices on (row, col) offsets:
# np.rot90 maps the offset (u, v) from the centre to (-v, u).
_ROT = np.array([[0, -1], [1, 0]], dtype=np.int64)
_MIRROR = np.array([[1, 0], [0, -1]], dtype=np.int64)


class Element(NamedTuple):
  """An element of p4m: mirror (m), then rotate (r), then translate (t).

  Attributes:
    rotation: r, the number of `np.rot90` steps (counter-clockwise); any
      integer, taken mod 4 (so -1 and 3 are the same rotation).
    mirror: m in {0, 1}; 1 flips the W axis before the rotation.
    translation: (ty, tx), a cyclic shift of the (H, W) axes applied last.
  """

  rotation: int = 0
  mirror: int = 0
  translation: tuple[int, int] = (0, 0)


def group_order(group: str) -> int:
  """The number of roto-reflections: 4 for "p4", 8 for "p4m".

  Raises:
    ValueError: if `group` is neither "p4" nor "p4m".
  """
  try:
    known = group in GROUP_ORDERS
  except TypeError:  # unhashable, e.g. a list
    known = False
  if not known:
    raise ValueError(
      f"group must be one of {sorted(GROUP_ORDERS)}, got {group!r}."
    )
  return GROUP_ORDERS[group]


def _check_int(value, name: str) -> int:
  """`value` as an int: Python/NumPy integers or concrete 0-d int arrays.

  Group elements are static (they pick gathers and rotations at trace
  time), so a traced value is refused with a message that says so.
  """
  if isinstance(value, jax.core.Tracer):
    raise ValueError(
      f"{name} must be a concrete integer (group elements are static), got "
      f"a traced value {value!r}."
    )
  if isinstance(value, np.ndarray | jax.Array) and value.ndim == 0:
    if jnp.issubdtype(value.dtype, jnp.integer):
      return int(value)
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
    raise ValueError(
      f"{name} must be a Python or NumPy integer, got {value!r} "
      f"of type {type(value).__name__}."
    )
  return int(value)


def _canonical(g: Element) -> Element:
  """Validates an element and reduces r mod 4."""
  if not isinstance(g, Element):
    raise ValueError(f"expected a groups.Element, got {g!r}.")
  r = _check_int(g.rotation, "rotation")
  m = _check_int(g.mirror, "mirror")
  if m not in (0, 1):
    raise ValueError(f"mirror must be 0 or 1, got {m}.")
  t = g.translation
  if isinstance(t, str) or not isinstance(t, Sequence | np.ndarray):
    t = None
  if t is None or len(t) != 2:
    raise ValueError(
      f"translation must be a pair (ty, tx), got {g.translation!r}."
    )
  ty = _check_int(g.translation[0], "translation[0]")
  tx = _check_int(g.translation[1], "translation[1]")
  return Element(r % 4, m, (ty, tx))


def identity() -> Element:
  """The identity element."""
  return Element(0, 0, (0, 0))


def linear_part(g: Element) -> np.ndarray:
  """The 2x2 integer matrix `R^r M^m` acting on (row, col) offsets."""
  g = _canonical(g)
  mat = np.linalg.matrix_power(_ROT, g.rotation)
  return mat @ _MIRROR if g.mirror else mat


def compose(g: Element, h: Element) -> Element:
  """The product `g * h`: the map "first h, then g".

  Args:
    g: the element applied second.
    h: the element applied first.

  Returns:
    `g * h`, so that `act(g, act(h, x)) == act(compose(g, h), x)`.
  """
  g, h = _canonical(g), _canonical(h)
  shift = linear_part(g) @ np.array(h.translation, dtype=np.int64)
  sign = -1 if g.mirror else 1
  return Element(
    (g.rotation + sign * h.rotation) % 4,
    g.mirror ^ h.mirror,
    (g.translation[0] + int(shift[0]), g.translation[1] + int(shift[1])),
  )


def inverse(g: Element) -> Element:
  """The inverse: `compose(g, inverse(g)) == identity()`."""
  g = _canonical(g)
  # A reflection is its own inverse; a rotation by r is undone by -r.
  rot = g.rotation if g.mirror else (-g.rotation) % 4
  inv = Element(rot, g.mirror, (0, 0))
  shift = -(linear_part(inv) @ np.array(g.translation, dtype=np.int64))
  return Element(rot, g.mirror, (int(shift[0]), int(shift[1])))


def index(g: Element) -> int:
  """The flat index `m * 4 + r` of the roto-reflection part of `g`."""
  g = _canonical(g)
  return g.mirror * 4 + g.rotation


def element(group: str, i: int) -> Element:
  """The roto-reflection with flat index `i` (inverse of `index`).

  Raises:
    ValueError: if `i` is not an integer in `0 .. order - 1`.
  """
  order = group_order(group)
  i = _check_int(i, "index")
  if not 0 <= i < order:
    raise ValueError(f"index must be in 0..{order - 1} for {group}, got {i}.")
  return Element(i % 4, i // 4, (0, 0))


def elements(group: str) -> tuple[Element, ...]:
  """The roto-reflections of `group` in flat-index order."""
  return tuple(element(group, i) for i in range(group_order(group)))


def cayley_table(group: str) -> np.ndarray:
  """`table[i, j] = index(compose(element(i), element(j)))`, `[G, G]`."""
  elems = elements(group)
  return np.array([[index(compose(a, b)) for b in elems] for a in elems])


def group_permutation(g: Element, order: int) -> np.ndarray:
  """The gather indices of the group-axis action: `perm[h] = g^-1 h`.

  Args:
    g: the acting element (its translation is ignored).
    order: 4 (p4 maps) or 8 (p4m maps).

  Returns:
    int array `[order]`; `f[..., perm]` is the group axis of `g f`.

  Raises:
    ValueError: if order is not 4 or 8, or if a mirror acts on a p4 axis.
  """
  g = _canonical(g)
  if not checks.is_int(order) or order not in (4, 8):
    raise ValueError(f"the group axis must have size 4 or 8, got {order}.")
  if order == 4 and g.mirror:
    raise ValueError(
      "a p4 feature map (group axis of size 4) cannot be mirrored; "
      f"got an element with mirror=1: {g}."
    )
  g_inv = inverse(Element(g.rotation, g.mirror, (0, 0)))
  group = "p4" if order == 4 else "p4m"
  return np.array([index(compose(g_inv, h)) for h in elements(group)])


def transform_spatial(x, g: Element, axes: tuple[int, int] = (1, 2)):
  """Moves the pixels of `x` on `axes` by `g`: `(g x)(p) = x(g^-1 p)`.

  Works on NumPy arrays (returned as NumPy, used to build static gather
  indices) and on jax arrays.

  Args:
    x: any array with two spatial axes `axes` (square for rotations that
      are to compose with translations).
    g: the element; mirror flips `axes[1]`, then `rot90` by g.rotation on
      `axes`, then a cyclic roll by g.translation.
    axes: the (H, W) axes.

  Returns:
    The transformed array.

  Raises:
    ValueError: for a malformed element or `axes` that are not two distinct
      axes of `x`.
  """
  g = _canonical(g)
  if not isinstance(x, jax.Array):
    x = np.asarray(x)
  ndim = x.ndim
  if (
    not isinstance(axes, tuple | list)
    or len(axes) != 2
    or not all(checks.is_int(a) and -ndim <= a < ndim for a in axes)
    or axes[0] % ndim == axes[1] % ndim
  ):
    raise ValueError(
      f"axes must be two distinct axes of the array (rank {ndim}), got "
      f"{axes!r}."
    )
  xp = np if isinstance(x, np.ndarray) else jnp
  if g.mirror:
    x = xp.flip(x, axis=axes[1])
  if g.rotation:
    x = xp.rot90(x, g.rotation, axes=axes)
  if g.translation != (0, 0):
    x = xp.roll(x, g.translation, axis=axes)
  return x


def act_on_image(g: Element, x):
  """The action of `g` on images `x[N, H, W, C]`: `(g x)(p) = x(g^-1 p)`.

  Raises:
    ValueError: if `x` is not of rank 4.
  """
  if np.ndim(x) != 4:
    raise ValueError(
      f"expected an image batch [N, H, W, C] of rank 4, got shape "
      f"{np.shape(x)}."
    )
  return transform_spatial(x, g, axes=(1, 2))


def act_on_map(g: Element, f):
  """The action on group feature maps `f[N, H, W, C, G]`, G = 4 or 8.

  `(g f)(p, h) = f(g^-1 p, g^-1 h)`: for p4 and a rotation by r this is
  `roll(rot90(f, r, axes=(1, 2)), r, axis=-1)`.

  Raises:
    ValueError: if `f` is not of rank 5, its group axis is not 4 or 8, or
      `g` mirrors a p4 map.
  """
  if np.ndim(f) != 5:
    raise ValueError(
      f"expected a group feature map [N, H, W, C, G] of rank 5, got shape "
      f"{np.shape(f)}."
    )
  perm = group_permutation(g, np.shape(f)[-1])
  if not isinstance(f, jax.Array):
    f = np.asarray(f)
  xp = np if isinstance(f, np.ndarray) else jnp
  return transform_spatial(xp.take(f, perm, axis=-1), g, axes=(1, 2))
