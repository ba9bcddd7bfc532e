"""Filter banks: every transformed copy of a filter as one HWIO kernel."""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from equivlab import groups
from equivlab.gconv.padding import check_rank


@functools.cache
def _bank_indices(group: str, kh: int, kw: int, gin: int) -> np.ndarray:
  """Static gather indices `[G, kh, kw, gin]` into the flat `(kh, kw, gin)`.

  Entry `[g, i, j, h]` is the flat position in `w` that lands at `(i, j, h)`
  in `g w`, where `g` acts on the spatial axes of the filter and (when
  `gin > 1`) permutes its input group axis like a feature map.
  """
  base = np.arange(kh * kw * gin).reshape(kh, kw, gin)
  banks = []
  for g in groups.elements(group):  # at trace time only: builds constants.
    moved = groups.transform_spatial(base, g, axes=(0, 1))
    if gin > 1:
      moved = moved[..., groups.group_permutation(g, gin)]
    banks.append(moved)
  return np.stack(banks).astype(np.int32)


def lifting_filter_bank(w: jax.Array, group: str = "p4") -> jax.Array:
  """All transformed copies of a lifting filter, as one HWIO kernel.

  Args:
    w: `[kh, kw, Cin, Cout]`, kh == kw.
    group: "p4" or "p4m".

  Returns:
    `[kh, kw, Cin, Cout * G]` where channel `o * G + g` holds `g w[..., o]`
    (for p4: `rot90(w, g, axes=(0, 1))`).
  """
  order = groups.group_order(group)
  check_rank(w, 4, "a lifting filter [kh, kw, Cin, Cout]", "w")
  w = jnp.asarray(w)
  kh, kw, cin, cout = w.shape
  check_square_kernel(w)
  idx = _bank_indices(group, kh, kw, 1).reshape(order, kh * kw)
  flat = w.reshape(kh * kw, cin, cout)
  bank = flat.at[idx.reshape(-1)].get(mode="promise_in_bounds")
  bank = bank.reshape(order, kh, kw, cin, cout)
  return jnp.transpose(bank, (1, 2, 3, 4, 0)).reshape(kh, kw, cin, -1)


def group_filter_bank(w: jax.Array, group: str = "p4") -> jax.Array:
  """All transformed copies of a group-conv filter, as one HWIO kernel.

  For p4, copy `s` is `w_s = roll(rot90(w, s, axes=(0, 1)), s, axis=3)`
  (DESIGN.md); for p4m, copy `g` is the action of `g` on `w` viewed as a
  group feature map over its (kh, kw) and input group axes.

  Args:
    w: `[kh, kw, Cin, G, Cout]`, kh == kw, G = 4 (p4) or 8 (p4m).
    group: "p4" or "p4m".

  Returns:
    `[kh, kw, Cin * G, Cout * G]`: input channel `c * G + t`, output channel
    `o * G + s` holds `w_s[:, :, c, t, o]`.
  """
  order = groups.group_order(group)
  check_rank(w, 5, f"a group filter [kh, kw, Cin, {order}, Cout]", "w")
  w = jnp.asarray(w)
  kh, kw, cin, gin, cout = w.shape
  if gin != order:
    raise ValueError(
      f"w must have an input group axis (axis 3) of size {order} for "
      f"{group}, got shape {w.shape}."
    )
  check_square_kernel(w)
  idx = _bank_indices(group, kh, kw, order).reshape(-1)
  flat = jnp.transpose(w, (0, 1, 3, 2, 4)).reshape(kh * kw * order, cin, cout)
  bank = flat.at[idx].get(mode="promise_in_bounds")
  bank = bank.reshape(order, kh, kw, order, cin, cout)
  # -> [kh, kw, Cin, G_in, Cout, G_out]
  bank = jnp.transpose(bank, (1, 2, 4, 3, 5, 0))
  return bank.reshape(kh, kw, cin * order, cout * order)


def check_square_kernel(w) -> None:
  if w.shape[0] != w.shape[1] or w.shape[0] < 1:
    raise ValueError(
      f"the kernel must be square (kh == kw >= 1) to be rotated, got "
      f"{w.shape[0]}x{w.shape[1]} (w shape {w.shape})."
    )
