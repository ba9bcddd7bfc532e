"""Group laws of p4 and p4m, and that their actions are homomorphisms.

Composition order (see `equivlab.groups`): `compose(g, h)` is "first h, then
g", so `act(g, act(h, x)) == act(compose(g, h), x)`.
"""

import itertools

import hypothesis
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from equivlab import groups
from equivlab.testing import strategies

_E = groups.Element


def _with_translations(group, seed):
  """Every roto-reflection of `group`, each with a random translation."""
  rng = np.random.default_rng(seed)
  return [
    _E(g.rotation, g.mirror, tuple(int(t) for t in rng.integers(-9, 10, 2)))
    for g in groups.elements(group)
  ]


@pytest.mark.parametrize("group", ["p4", "p4m"])
def test_cayley_table_is_a_latin_square_closed_in_the_group(group):
  table = groups.cayley_table(group)
  order = groups.group_order(group)
  assert table.shape == (order, order)
  for row in (*table, *table.T):  # closure, and cancellation both sides
    np.testing.assert_array_equal(np.sort(row), np.arange(order))


@pytest.mark.parametrize("group", ["p4", "p4m"])
def test_associativity_identity_inverse_with_translations(group):
  elems = _with_translations(group, 0)
  e = groups.identity()
  for a, b, c in itertools.product(elems, repeat=3):
    assert groups.compose(groups.compose(a, b), c) == groups.compose(
      a, groups.compose(b, c)
    )
  for a in elems:
    assert groups.compose(a, e) == a == groups.compose(e, a)
    assert groups.compose(a, groups.inverse(a)) == e
    assert groups.compose(groups.inverse(a), a) == e


def test_composition_matches_matrices_and_mirror_conjugation():
  rot, mirror = _E(1), _E(0, 1)
  # M R M = R^-1: a mirror turns a rotation into its inverse.
  assert groups.compose(mirror, groups.compose(rot, mirror)) == _E(3)
  # "first h, then g": mirror then rotate is index 4 + 1.
  assert groups.compose(rot, mirror) == _E(1, 1)
  assert groups.index(groups.compose(rot, mirror)) == 5
  for a, b in itertools.product(groups.elements("p4m"), repeat=2):
    np.testing.assert_array_equal(
      groups.linear_part(groups.compose(a, b)),
      groups.linear_part(a) @ groups.linear_part(b),
    )


def test_p4_is_the_rotation_subgroup_and_indices_round_trip():
  table = groups.cayley_table("p4m")
  np.testing.assert_array_equal(table[:4, :4], groups.cayley_table("p4"))
  assert table[:4, :4].max() < 4
  for i in range(8):
    assert groups.index(groups.element("p4m", i)) == i


@pytest.mark.parametrize("size", [5, 6])
def test_action_on_images_is_a_homomorphism(size):
  x = np.random.default_rng(1).standard_normal((2, size, size, 3))
  elems = _with_translations("p4m", 2)
  for g, h in itertools.product(elems, repeat=2):
    np.testing.assert_array_equal(
      groups.act_on_image(g, groups.act_on_image(h, x)),
      groups.act_on_image(groups.compose(g, h), x),
    )


@pytest.mark.parametrize("group, size", [("p4", 5), ("p4m", 6)])
def test_action_on_maps_is_a_homomorphism(group, size):
  order = groups.group_order(group)
  f = np.random.default_rng(3).standard_normal((2, size, size, 3, order))
  elems = _with_translations(group, 4)
  for g, h in itertools.product(elems, repeat=2):
    np.testing.assert_array_equal(
      groups.act_on_map(g, groups.act_on_map(h, f)),
      groups.act_on_map(groups.compose(g, h), f),
    )


@hypothesis.settings(max_examples=20)
@hypothesis.given(
  strategies.group_elements("p4m", max_shift=9),
  strategies.group_elements("p4m", max_shift=9),
  strategies.images(size=(1, 6)),
  strategies.group_maps("p4m", size=(1, 6)),
)
def test_actions_are_homomorphisms_for_drawn_elements(g, h, x, f):
  # The same law as above, over drawn sizes (odd, even, 1) and shifts.
  gh = groups.compose(g, h)
  np.testing.assert_array_equal(
    groups.act_on_image(g, groups.act_on_image(h, x)),
    groups.act_on_image(gh, x),
  )
  np.testing.assert_array_equal(
    groups.act_on_map(g, groups.act_on_map(h, f)), groups.act_on_map(gh, f)
  )
  assert groups.compose(gh, groups.inverse(gh)) == groups.identity()


def test_action_on_a_pixel_follows_the_affine_map():
  # A single bright pixel moves to t + L (p - c) + c (c = the centre).
  size, centre = 7, np.array([3, 3])
  for g in _with_translations("p4m", 5):
    x = np.zeros((1, size, size, 1))
    p = np.array([1, 5])
    x[0, p[0], p[1], 0] = 1.0
    q = (groups.linear_part(g) @ (p - centre) + centre + g.translation) % size
    moved = groups.act_on_image(g, x)
    assert moved[0, q[0], q[1], 0] == 1.0


def test_map_action_agrees_between_numpy_and_jax():
  f = np.random.default_rng(6).standard_normal((1, 4, 4, 2, 8), np.float32)
  g = _E(3, 1, (1, -2))
  np.testing.assert_array_equal(
    groups.act_on_map(g, jnp.asarray(f)), groups.act_on_map(g, f)
  )


def test_error_unknown_group():
  with pytest.raises(ValueError, match=r"\['p4', 'p4m'\], got 'p6'"):
    groups.group_order("p6")


def test_error_mirror_on_a_p4_map():
  with pytest.raises(ValueError, match="cannot be mirrored"):
    groups.act_on_map(_E(0, 1), np.zeros((1, 3, 3, 1, 4)))


def test_error_non_integer_rotation():
  with pytest.raises(ValueError, match="integer, got 0.5 of type float"):
    groups.compose(_E(0.5), _E(1))


def test_error_wrong_rank_map():
  with pytest.raises(ValueError, match=r"rank 5, got shape \(1, 3, 3, 4\)"):
    groups.act_on_map(_E(1), np.zeros((1, 3, 3, 4)))


def test_error_index_out_of_range():
  with pytest.raises(ValueError, match="0..3 for p4, got 5"):
    groups.element("p4", 5)


def test_error_malformed_translation():
  for bad in (5, None, "ab", (1, 2, 3)):
    with pytest.raises(ValueError, match=r"translation must be a pair"):
      groups.index(_E(0, 0, bad))


def test_error_unhashable_group():
  with pytest.raises(ValueError, match=r"\['p4', 'p4m'\], got \['p4'\]"):
    groups.group_order(["p4"])


def test_error_bad_axes():
  x = np.zeros((2, 3, 3))
  for axes in ((0, 5), (1, 1), (1, -2), 1, (0.5, 1)):
    with pytest.raises(ValueError, match="axes must be two distinct axes"):
      groups.transform_spatial(x, _E(1), axes=axes)


def test_array_likes_are_accepted():
  x = np.arange(8.0).reshape(1, 2, 2, 2)
  np.testing.assert_array_equal(
    groups.act_on_image(_E(1), x.tolist()), groups.act_on_image(_E(1), x)
  )


@pytest.mark.parametrize(
  ("group", "index", "match"),
  [
    ("p4", -1, "0..3 for p4, got -1"),
    ("p4", 4, "0..3 for p4, got 4"),
    ("p4m", 8, "0..7 for p4m, got 8"),
    ("p4m", -8, "0..7 for p4m, got -8"),
    ("p4", 1.0, "integer, got 1.0 of type float"),
    ("p4", True, "integer, got True of type bool"),
    ("p4", np.float32(2), "integer"),
    ("p4", jnp.array([1, 2]), "integer"),
    ("p4", "1", "integer"),
  ],
)
def test_element_indices_outside_the_group_are_refused(group, index, match):
  with pytest.raises(ValueError, match=match):
    groups.element(group, index)


def test_element_indices_may_be_concrete_array_scalars():
  assert groups.element("p4m", np.int64(5)) == _E(1, 1)
  assert groups.element("p4m", jnp.array(6)) == _E(2, 1)
  assert groups.element("p4", np.array(3)) == _E(3)
  # A rotation is any integer number of quarter turns, taken mod 4.
  assert groups.index(_E(jnp.int32(-1))) == 3 == groups.index(_E(7))


def test_traced_element_indices_are_refused_as_static():
  with pytest.raises(ValueError, match="concrete integer .*static"):
    jax.jit(lambda i: groups.index(groups.element("p4", i)))(1)


@pytest.mark.parametrize("order", [4.0, True, 5, "4", None])
def test_group_permutation_refuses_orders_other_than_4_and_8(order):
  with pytest.raises(ValueError, match="group axis must have size 4 or 8"):
    groups.group_permutation(_E(1), order)
