"""Tests of equivlab.analysis.adversarial: optimised adversarial patches."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from equivlab.analysis import adversarial
from equivlab.nn import models


def test_box_mask_and_apply_patch_by_hand():
  mask = np.asarray(adversarial.box_mask(4, 5, 1, 2, 2))
  expected = np.zeros((4, 5), bool)
  expected[1:3, 2:4] = True
  np.testing.assert_array_equal(mask, expected)
  image = np.zeros((4, 5, 1), np.float32)
  content = np.arange(20, dtype=np.float32).reshape(4, 5, 1)
  patched = np.asarray(adversarial.apply_patch(image, content, 1, 2, 2))
  np.testing.assert_array_equal(
    patched[..., 0], np.where(expected, content[..., 0], 0)
  )


def test_target_margin_by_hand():
  logits = jnp.array([[1.0, 3.0, 2.0], [5.0, 0.0, -1.0]])
  np.testing.assert_allclose(
    adversarial.target_margin(logits, 1), [2.0 - 3.0, 5.0 - 0.0]
  )
  np.testing.assert_allclose(
    adversarial.target_margin(logits, 0), [3.0 - 1.0, 0.0 - 5.0]
  )


def _two_pixel_model(x):
  """Class 0 logit 0; class 1 needs ink at (1, 1) AND (1, 4); class 2 at (4, 0).

  Class 1's logit is `10 (x[1, 1] + x[1, 4]) - 15`: both pixels must be
  near 1, and they are 4 columns apart, so the smallest patch that makes
  it win is 4 wide. Class 2's is `10 x[4, 0] - 5`: one pixel suffices.
  """
  x = x[..., 0]
  one = 10.0 * (x[:, 1, 1] + x[:, 1, 4]) - 15.0
  two = 10.0 * x[:, 4, 0] - 5.0
  return jnp.stack([jnp.zeros_like(one), one, two], axis=-1)


def test_smallest_patches_of_a_model_with_known_answers():
  image = np.zeros((6, 6, 1), np.float32)
  results = adversarial.smallest_patches(
    _two_pixel_model, image, 0, grid=3, num_salient=4, num_steps=20
  )
  assert set(results) == {1, 2}
  one, two = results[1], results[2]
  assert one["found"] and two["found"]
  assert one["size"] == 4 and one["row"] in (0, 1) and one["col"] == 1
  # Bisection from 6: 3 fails, 5 and 4 flip.
  assert one["tried"] == {3: False, 4: True, 5: True, 6: True}
  assert two["size"] == 1 and (two["row"], two["col"]) == (4, 0)
  assert two["patch"].shape == (1, 1, 1) and two["patch"][0, 0, 0] > 0.5


def test_optimised_patches_flip_stay_in_range_and_inside_their_box():
  model = models.CNN(features=(4,), dense_features=8, num_classes=4)
  variables = model.init(jax.random.key(0), jnp.zeros((1, 12, 12, 1)))

  def apply_fn(x):
    return model.apply(variables, x, train=False)

  image = np.asarray(jax.random.uniform(jax.random.key(1), (12, 12, 1)))
  label = int(jnp.argmax(apply_fn(image[None])[0]))
  results = adversarial.smallest_patches(apply_fn, image, label, num_steps=30)
  assert sorted(results) == [k for k in range(4) if k != label]
  found = [r for r in results.values() if r["found"]]
  assert found
  for target, result in results.items():
    if not result["found"]:
      continue
    size, row, col = result["size"], result["row"], result["col"]
    patched = result["patched"]
    # Flips, by an independent evaluation of the patched image.
    assert int(jnp.argmax(apply_fn(patched[None])[0])) == target
    # Inside the image, in [0, 1], and nothing outside the box changed.
    assert 0 <= row <= 12 - size and 0 <= col <= 12 - size
    box = np.zeros((12, 12), bool)
    box[row : row + size, col : col + size] = True
    np.testing.assert_array_equal(patched[~box], image[~box])
    np.testing.assert_array_equal(patched[box], result["patch"].reshape(-1, 1))
    assert 0.0 <= result["patch"].min() and result["patch"].max() <= 1.0
    assert result["tried"][size]
    if size > 1:
      assert result["tried"][size - 1] is False


def test_one_compilation_for_every_size_and_target_and_same_seed_same_patch():
  attack = adversarial.make_patch_attack(_two_pixel_model, num_steps=5)
  image = jnp.zeros((6, 6, 1))
  outs = [
    attack(image, target, size, jax.random.key(size))
    for target in (1, 2)
    for size in (1, 3, 6)
  ]
  assert attack._cache_size() == 1
  again = attack(image, 2, 3, jax.random.key(3))
  for key in ("content", "patched", "probs"):
    np.testing.assert_array_equal(again[key], outs[4][key])


def test_steps_stop_once_a_position_flips():
  rows = jnp.array([0, 4])
  cols = jnp.array([0, 0])
  out = adversarial.optimise_patch(
    _two_pixel_model,
    jnp.zeros((6, 6, 1)),
    2,
    1,
    rows,
    cols,
    jax.random.key(0),
    num_steps=50,
    step_size=0.25,
  )
  # Only the patch at (4, 0) matters; from a start u in [0, 1) it needs
  # ceil((0.5 - u) / 0.25) steps to pass 0.5, at most 2.
  assert int(out["steps"]) <= 2
  assert out["label"].tolist()[1] == 2
  content = np.asarray(out["content"])
  assert 0.0 <= content.min() and content.max() <= 1.0


def _constant(x):
  return jnp.tile(jnp.array([[3.0, 0.0]]), (x.shape[0], 1))


@pytest.mark.parametrize(
  ("kwargs", "error", "message"),
  [
    ({"image": np.zeros((1, 6, 6, 1))}, ValueError, r"one image \[H, W, C\]"),
    ({"label": 1}, ValueError, "must be classified as label 1"),
    ({"label": 2}, ValueError, r"label must be an int <= 1, got 2"),
    ({"label": True}, TypeError, "label must be an int"),
    ({"targets": (0,)}, ValueError, r"targets\[0\] must differ from label 0"),
    ({"targets": (5,)}, ValueError, r"targets\[0\] must be an int in \[0, 1\]"),
    ({"max_size": 0}, ValueError, r"max_size must be an int in \[1, 6\]"),
    ({"max_size": 7}, ValueError, r"max_size must be an int in \[1, 6\]"),
    ({"grid": 0}, ValueError, "grid must be an int >= 1, got 0"),
    ({"num_salient": -1}, ValueError, "num_salient must be an int >= 0"),
    ({"num_steps": 0}, ValueError, "num_steps must be an int >= 1"),
    ({"step_size": 0.0}, ValueError, "step_size must be a finite number > 0"),
    ({"step_size": np.nan}, ValueError, "step_size must be a finite number"),
    ({"seed": -1}, ValueError, "seed must be an int >= 0"),
    ({"apply_fn": None}, TypeError, "apply_fn must be a function"),
  ],
)
def test_bad_inputs_are_clear_errors(kwargs, error, message):
  arguments = {"apply_fn": _constant, "image": np.zeros((6, 6, 1)), "label": 0}
  arguments.update(kwargs)
  apply_fn, image, label = (
    arguments.pop(k) for k in ("apply_fn", "image", "label")
  )
  with pytest.raises(error, match=message):
    adversarial.smallest_patches(apply_fn, image, label, **arguments)


def test_no_patch_can_flip_a_constant_model():
  results = adversarial.smallest_patches(
    _constant, np.zeros((6, 6, 1)), 0, num_steps=3
  )
  assert results == {1: {"found": False, "target": 1, "tried": {6: False}}}


@pytest.mark.parametrize(
  ("guess", "tried"),
  [
    (None, {3: False, 4: True, 5: True, 6: True}),
    (4, {3: False, 4: True, 6: True}),  # The guess and one below.
    (5, {3: False, 4: True, 5: True, 6: True}),  # Down from the guess.
    (2, {2: False, 3: False, 4: True, 5: True, 6: True}),
  ],
)
def test_a_guess_changes_the_sides_tried_not_the_answer(guess, tried):
  attack = adversarial.make_patch_attack(
    _two_pixel_model, grid=3, num_salient=4, num_steps=20
  )
  result = adversarial.smallest_patch(
    attack,
    jnp.zeros((6, 6, 1)),
    1,
    max_size=6,
    key=jax.random.key(0),
    guess=guess,
  )
  assert result["size"] == 4
  assert result["tried"] == tried


# --- bad input at the lower levels ------------------------------------------

_IMG = np.zeros((6, 6, 1), np.float32)
_KEY = jax.random.key(0)
_ROWS = jnp.zeros((2,), jnp.int32)


@pytest.mark.parametrize(
  "call,error,match",
  [
    # A patch larger than the image, or outside it.
    (lambda: adversarial.box_mask(6, 6, 0, 0, 7), ValueError, r"size .*6x6"),
    (lambda: adversarial.box_mask(6, 6, 0, 0, 0), ValueError, "size must"),
    (lambda: adversarial.box_mask(6, 6, 3, 0, 4), ValueError, "row must"),
    (lambda: adversarial.box_mask(6, 6, 0, -1, 2), ValueError, "col must"),
    (lambda: adversarial.box_mask(0, 6, 0, 0, 1), ValueError, "height"),
    (lambda: adversarial.box_mask(6, 6, 0.5, 0, 1), TypeError, "row must"),
    (
      lambda: adversarial.apply_patch(_IMG, _IMG, 0, 0, 8),
      ValueError,
      "must fit",
    ),
    (
      lambda: adversarial.apply_patch(_IMG, _IMG[:3], 0, 0, 2),
      ValueError,
      "content must be a canvas",
    ),
    (
      lambda: adversarial.apply_patch(_IMG[0], _IMG[0], 0, 0, 2),
      ValueError,
      r"image must be one image \[H, W, C\]",
    ),
    (
      lambda: adversarial.candidate_positions(
        _two_pixel_model, _IMG, 1, 7, grid=2, num_salient=1
      ),
      ValueError,
      "must fit",
    ),
    (
      lambda: adversarial.candidate_positions(
        _two_pixel_model, _IMG, 1, 5, grid=2, num_salient=5
      ),
      ValueError,
      "num_salient",
    ),
    (
      lambda: adversarial.candidate_positions(
        _two_pixel_model, _IMG, 1, 2, grid=0, num_salient=1
      ),
      ValueError,
      "grid",
    ),
    (
      lambda: adversarial.optimise_patch(
        _two_pixel_model,
        _IMG,
        1,
        9,
        _ROWS,
        _ROWS,
        _KEY,
        num_steps=1,
        step_size=0.1,
      ),
      ValueError,
      "must fit",
    ),
    (
      lambda: adversarial.optimise_patch(
        _two_pixel_model,
        _IMG,
        1,
        3,
        _ROWS + 4,
        _ROWS,
        _KEY,
        num_steps=1,
        step_size=0.1,
      ),
      ValueError,
      r"rows must lie in \[0, 3\]",
    ),
    (
      lambda: adversarial.optimise_patch(
        _two_pixel_model,
        _IMG,
        1,
        3,
        _ROWS,
        _ROWS[:1],
        _KEY,
        num_steps=1,
        step_size=0.1,
      ),
      ValueError,
      "one length",
    ),
    (
      lambda: adversarial.make_patch_attack(_two_pixel_model)(_IMG, 1, 7, _KEY),
      ValueError,
      "must fit",
    ),
    # Classes outside [0, K).
    (
      lambda: adversarial.target_margin(jnp.zeros((2, 3)), 3),
      ValueError,
      r"target must be in \[0, 2\] \(3 classes\), got 3",
    ),
    (
      lambda: adversarial.target_margin(jnp.zeros((3,)), -1),
      ValueError,
      "target must be in",
    ),
    (
      lambda: adversarial.target_margin(jnp.zeros((3,)), 1.0),
      TypeError,
      "target must be an integer",
    ),
    (
      lambda: adversarial.candidate_positions(
        _two_pixel_model, _IMG, 5, 2, grid=2, num_salient=1
      ),
      ValueError,
      "target must be in",
    ),
    (
      lambda: adversarial.optimise_patch(
        _two_pixel_model,
        _IMG,
        3,
        2,
        _ROWS,
        _ROWS,
        _KEY,
        num_steps=1,
        step_size=0.1,
      ),
      ValueError,
      "target must be in",
    ),
    (
      lambda: adversarial.make_patch_attack(_two_pixel_model)(
        _IMG, jnp.int32(3), 2, _KEY
      ),
      ValueError,
      "target must be in",
    ),
    # Step sizes outside their domain.
    (
      lambda: adversarial.optimise_patch(
        _two_pixel_model,
        _IMG,
        1,
        2,
        _ROWS,
        _ROWS,
        _KEY,
        num_steps=1,
        step_size=0.0,
      ),
      ValueError,
      "step_size",
    ),
    (
      lambda: adversarial.make_patch_attack(
        _two_pixel_model, step_size=float("inf")
      ),
      ValueError,
      "step_size must be a finite number",
    ),
    (
      lambda: adversarial.make_patch_attack(_two_pixel_model, step_size=-1),
      ValueError,
      "step_size",
    ),
    (
      lambda: adversarial.make_patch_attack(_two_pixel_model, num_steps=-1),
      ValueError,
      "num_steps",
    ),
  ],
)
def test_lower_levels_refuse_bad_input_clearly(call, error, match):
  with pytest.raises(error, match=match):
    call()


def test_lower_levels_let_traced_positions_through():
  # Under jit the values are unknown: no check, the same result as eagerly.
  eager = adversarial.box_mask(6, 6, 1, 2, 3)
  jitted = jax.jit(adversarial.box_mask, static_argnums=(0, 1))(6, 6, 1, 2, 3)
  np.testing.assert_array_equal(eager, jitted)
  margin = jax.jit(adversarial.target_margin)(jnp.array([1.0, 3.0]), 0)
  np.testing.assert_allclose(margin, 2.0)
