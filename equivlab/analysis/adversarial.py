"""Adversarial patches: the smallest square whose content flips a prediction.

Can covering part of a digit change the classifier's answer? A grey patch
slid over the digit rarely does
(`equivlab.analysis.occlusion.find_flipping_patch`). Here the patch's
content is optimised instead. For a side `s` and a target class `t`, candidate
positions are searched (a regular grid of top-left corners plus the windows
where the gradient of the target margin is largest), and at every position
at once the content starts uniform random from a fixed key and follows
projected signed-gradient descent on the margin `max_{j != t} z_j - z_t`,
clipped to [0, 1] after every step (PGD, Madry et al. 2018), until some
position's patched image is classified as `t` or the steps run out.
Bisection over `s` (started from a guess: the answer for the previous
target) then finds the smallest side that flips the image to `t`.
Bisection is sound for the best patch: a patch one pixel larger can copy
the image's own pixels into its extra row and column, so if some `s`-patch
flips the image, some `(s + 1)`-patch does. The optimiser finds
the best patch only approximately, so every result lists the sides tried
and whether each flipped.

The size, position and target are traced: one compilation serves every
size, position and target of a model.
"""

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from equivlab import checks
from equivlab.analysis import occlusion
from equivlab.ops import xla_options

ApplyFn = Callable[[jax.Array], jax.Array]


def _check_box(height: int, width: int, row, col, size) -> None:
  """Raises unless a concrete box of side `size` at (row, col) fits."""
  side = checks.concrete_int("size", size)
  if side is not None and not 1 <= side <= min(height, width):
    raise ValueError(
      f"size must be in [1, {min(height, width)}] (the patch must fit in "
      f"the {height}x{width} image), got {side}."
    )
  last = side or 1
  checks.check_index("row", row, height - last + 1, "top rows that fit")
  checks.check_index("col", col, width - last + 1, "left columns that fit")


def _check_image(image) -> None:
  checks.check_rank("image", image, 3, "one image [H, W, C]")
  checks.check_floating("image", image)


def _num_classes(apply_fn: ApplyFn, image) -> int:
  """K of `apply_fn`'s logits `[1, K]` for `image[None]` (no compute)."""
  out = jax.eval_shape(
    apply_fn, jax.ShapeDtypeStruct((1, *image.shape), image.dtype)
  )
  if len(out.shape) != 2 or out.shape[0] != 1:
    raise ValueError(
      f"apply_fn must map images [B, H, W, C] to logits [B, K], got shape "
      f"{out.shape} for a batch of 1."
    )
  return out.shape[1]


def box_mask(height: int, width: int, row, col, size) -> jax.Array:
  """`[H, W]` bool: True on rows `row..row+size-1`, cols `col..col+size-1`.

  `row`, `col` and `size` may be traced (the top-left corner and the side);
  when concrete they are checked: the box must lie inside the image.

  Raises:
    ValueError: if `height` or `width` is not an int >= 1, or a concrete
      box does not fit (`size` in 1..min(H, W), `row` in 0..H - size, `col`
      in 0..W - size).
    TypeError: for non-integer positions or sizes.
  """
  checks.check_int("height", height, minimum=1)
  checks.check_int("width", width, minimum=1)
  _check_box(height, width, row, col, size)
  rows = jnp.arange(height)[:, None]
  cols = jnp.arange(width)[None, :]
  inside = (rows >= row) & (rows < row + size)
  return inside & (cols >= col) & (cols < col + size)


def apply_patch(image, content, row, col, size) -> jax.Array:
  """`image` with the box at (row, col) of side `size` taken from `content`.

  Args:
    image: `[H, W, C]`.
    content: `[H, W, C]`, a canvas; only the box is used.
    row: top row of the box (may be traced).
    col: left column of the box (may be traced).
    size: side of the box (may be traced).

  Returns:
    The patched image, `[H, W, C]`.

  Raises:
    ValueError: if `image` is not `[H, W, C]`, `content` differs in shape,
      or a concrete box does not fit in the image.
  """
  checks.check_rank("image", image, 3, "one image [H, W, C]")
  if jnp.shape(content) != jnp.shape(image):
    raise ValueError(
      f"content must be a canvas of the image's shape {jnp.shape(image)}, "
      f"got {jnp.shape(content)}."
    )
  mask = box_mask(image.shape[0], image.shape[1], row, col, size)
  return jnp.where(mask[:, :, None], content.astype(image.dtype), image)


def target_margin(logits: jax.Array, target) -> jax.Array:
  """`max_{j != target} logits_j - logits_target` over the last axis.

  Negative when `target` has the largest logit (the prediction is
  `target`), positive otherwise.

  Raises:
    ValueError: if `logits` is a scalar or a concrete `target` is not a
      class in `[0, K)`.
  """
  if jnp.ndim(logits) < 1:
    raise ValueError(f"logits must be [..., K], got shape {jnp.shape(logits)}.")
  checks.check_index("target", target, logits.shape[-1], "classes")
  classes = jnp.arange(logits.shape[-1])
  others = jnp.where(classes == target, -jnp.inf, logits)
  return jnp.max(others, axis=-1) - jnp.take(logits, target, axis=-1)


def candidate_positions(
  apply_fn: ApplyFn, image, target, size, *, grid: int, num_salient: int
) -> tuple[jax.Array, jax.Array]:
  """Top-left corners to try for a `size` x `size` patch (jittable).

  `grid` x `grid` corners spread evenly over `[0, H - size] x [0, W -
  size]`, then the `num_salient` windows with the largest sum of
  `|d margin / d image|` (the target margin's gradient at the clean image).

  Returns:
    `(rows, cols)`, int32 `[grid**2 + num_salient]` each.

  Raises:
    ValueError: if `image` is not `[H, W, C]`, `grid` < 1, `num_salient` is
      negative or more than the windows of a concrete `size`, the patch does
      not fit, or a concrete `target` is not a class of `apply_fn`.
  """
  _check_image(image)
  h, w = image.shape[:2]
  checks.check_int("grid", grid, minimum=1)
  _check_box(h, w, 0, 0, size)
  side = checks.concrete_int("size", size)
  windows = h * w if side is None else (h - side + 1) * (w - side + 1)
  checks.check_int("num_salient", num_salient, minimum=0, maximum=windows)
  checks.check_index("target", target, _num_classes(apply_fn, image), "classes")
  steps = jnp.linspace(0.0, 1.0, grid)
  grid_rows = jnp.round(steps * (h - size)).astype(jnp.int32)
  grid_cols = jnp.round(steps * (w - size)).astype(jnp.int32)
  rows = jnp.repeat(grid_rows, grid)
  cols = jnp.tile(grid_cols, grid)
  if num_salient:
    saliency = jnp.abs(
      jax.grad(lambda x: target_margin(apply_fn(x[None])[0], target))(image)
    ).sum(-1)
    # Box sums of every window from the integral image (size is traced).
    total = jnp.pad(jnp.cumsum(jnp.cumsum(saliency, 0), 1), ((1, 0), (1, 0)))
    r = jnp.arange(h)[:, None]
    c = jnp.arange(w)[None, :]
    r2, c2 = jnp.minimum(r + size, h), jnp.minimum(c + size, w)
    boxes = total[r2, c2] - total[r, c2] - total[r2, c] + total[r, c]
    boxes = jnp.where((r <= h - size) & (c <= w - size), boxes, -jnp.inf)
    values, best = lax.top_k(boxes.ravel(), num_salient)
    # Fewer windows than asked for: repeat the best one.
    best = jnp.where(values > -jnp.inf, best, best[0])
    rows = jnp.concatenate([rows, (best // w).astype(jnp.int32)])
    cols = jnp.concatenate([cols, (best % w).astype(jnp.int32)])
  return rows, cols


def _check_step_size(step_size) -> None:
  if checks.is_concrete(step_size):
    checks.check_number("step_size", step_size, minimum=0, strict_minimum=True)


def _check_optimise(
  apply_fn, image, target, size, rows, cols, num_steps, step_size
) -> None:
  """The arguments of `optimise_patch` (concrete ones by value)."""
  _check_image(image)
  if jnp.ndim(rows) != 1 or jnp.shape(rows) != jnp.shape(cols):
    raise ValueError(
      f"rows and cols must be positions [P] of one length, got shapes "
      f"{jnp.shape(rows)} and {jnp.shape(cols)}."
    )
  checks.check_int("num_steps", num_steps, minimum=0)
  _check_step_size(step_size)
  h, w = image.shape[:2]
  _check_box(h, w, 0, 0, size)
  side = checks.concrete_int("size", size) or 1
  if checks.is_concrete((rows, cols)) and rows.shape[0]:
    for name, where, limit in (("rows", rows, h), ("cols", cols, w)):
      where = np.asarray(where)
      if not np.issubdtype(where.dtype, np.integer):
        raise TypeError(f"{name} must be integer positions, got {where.dtype}.")
      if where.min() < 0 or where.max() > limit - side:
        raise ValueError(
          f"{name} must lie in [0, {limit - side}] for a patch of side "
          f"{side}, got values in [{where.min()}, {where.max()}]."
        )
  checks.check_index("target", target, _num_classes(apply_fn, image), "classes")


def optimise_patch(
  apply_fn: ApplyFn,
  image: jax.Array,
  target,
  size,
  rows: jax.Array,
  cols: jax.Array,
  key: jax.Array,
  *,
  num_steps: int,
  step_size: float,
) -> dict[str, jax.Array]:
  """Projected signed-gradient descent of the patch content at P positions.

  Pure and jittable (every array argument may be traced). The steps stop
  early once some position's patched image is classified as `target`.

  Args:
    apply_fn: images `[B, H, W, C]` -> logits `[B, K]`.
    image: `[H, W, C]`.
    target: the class to reach.
    size: the patch side.
    rows: `[P]` top rows of the patches.
    cols: `[P]` left columns.
    key: PRNG key of the uniform random start.
    num_steps: the most gradient steps.
    step_size: the change of every pixel per step (in [0, 1] units).

  Returns:
    "content" `[P, H, W, C]` (the canvases; only each box is used),
    "margin" `[P]` and "label" `[P]` of the patched images, and "steps",
    the number of gradient steps taken.

  Raises:
    ValueError: if `image` is not `[H, W, C]`, `rows` and `cols` are not
      `[P]` alike, `num_steps` < 0, `step_size` is not a finite number > 0,
      a concrete patch does not fit, or a concrete `target` is not a class.
  """
  _check_optimise(
    apply_fn, image, target, size, rows, cols, num_steps, step_size
  )
  num = rows.shape[0]
  start = jax.random.uniform(key, (num, *image.shape), image.dtype)
  paste = jax.vmap(apply_patch, in_axes=(None, 0, 0, 0, None))

  def evaluate(content):
    logits = apply_fn(paste(image, content, rows, cols, size))
    margin = target_margin(logits, target)
    return jnp.sum(margin), (margin, jnp.argmax(logits, axis=-1))

  def keep_going(carry):
    step, _, done = carry
    return (step < num_steps) & ~done

  def step_once(carry):
    step, content, _ = carry
    (_, (_, label)), grad = jax.value_and_grad(evaluate, has_aux=True)(content)
    done = jnp.any(label == target)
    moved = jnp.clip(content - step_size * jnp.sign(grad), 0.0, 1.0)
    return step + 1, jnp.where(done, content, moved), done

  steps, content, _ = lax.while_loop(
    keep_going, step_once, (jnp.int32(0), start, jnp.bool_(False))
  )
  _, (margin, label) = evaluate(content)
  return {"content": content, "margin": margin, "label": label, "steps": steps}


def make_patch_attack(
  apply_fn: ApplyFn,
  *,
  grid: int = 4,
  num_salient: int = 8,
  num_steps: int = 40,
  step_size: float = 0.1,
) -> Callable[..., dict[str, jax.Array]]:
  """A jitted `attack(image, target, size, key)` at the best of P positions.

  One compilation serves every image of one shape, target and size.

  Returns:
    `attack`, whose result holds the best position's "row", "col",
    "content" `[H, W, C]`, "patched" `[H, W, C]` image, its "label",
    "probs" `[K]` and "margin", "flipped" (label == target) and "steps".
    `attack` checks its concrete arguments (the image, a target class of
    `apply_fn`, a side that fits) before the jitted search.

  Raises:
    ValueError: if `grid` < 1, `num_salient` < 0, `num_steps` < 0 or
      `step_size` is not a finite number > 0.
  """
  checks.check_int("grid", grid, minimum=1)
  checks.check_int("num_salient", num_salient, minimum=0)
  checks.check_int("num_steps", num_steps, minimum=0)
  _check_step_size(step_size)

  def attack(image, target, size, key):
    rows, cols = candidate_positions(
      apply_fn, image, target, size, grid=grid, num_salient=num_salient
    )
    out = optimise_patch(
      apply_fn,
      image,
      target,
      size,
      rows,
      cols,
      key,
      num_steps=num_steps,
      step_size=step_size,
    )
    hit = out["label"] == target
    score = jnp.where(jnp.any(hit) & ~hit, jnp.inf, out["margin"])
    best = jnp.argmin(score)
    row, col, content = rows[best], cols[best], out["content"][best]
    patched = apply_patch(image, content, row, col, size)
    probs = jax.nn.softmax(apply_fn(patched[None])[0])
    return {
      "row": row,
      "col": col,
      "content": content,
      "patched": patched,
      "label": jnp.argmax(probs),
      "probs": probs,
      "margin": target_margin(jnp.log(probs), target),
      "flipped": jnp.argmax(probs) == target,
      "steps": out["steps"],
    }

  jitted = xla_options.jit(attack)

  def checked_attack(image, target, size, key):
    _check_image(image)
    h, w = jnp.shape(image)[:2]
    _check_box(h, w, 0, 0, size)
    num_classes = _num_classes(apply_fn, image)
    checks.check_index("target", target, num_classes, "classes")
    return jitted(image, target, size, key)

  checked_attack._cache_size = jitted._cache_size  # Compilations, for tests.
  return checked_attack


def smallest_patch(
  attack: Callable[..., dict[str, jax.Array]],
  image: jax.Array,
  target: int,
  *,
  max_size: int,
  key: jax.Array,
  guess: int | None = None,
) -> dict[str, Any]:
  """Bisection over the side for the smallest patch that flips to `target`.

  `max_size` is tried first (if it does not flip, nothing smaller is
  tried). With a `guess` (e.g. the answer for another target), the guess
  is tried next: if it flips, the sides below it one by one down to the
  first that does not (a side that flips usually stops after a few steps,
  one that does not costs all `num_steps`); if not, the side above it,
  then bisection. Whatever the order, a found `size` flipped and, unless
  it is 1, `size - 1` was tried and did not.

  Args:
    attack: from `make_patch_attack`.
    image: `[H, W, C]` float32.
    target: the class to reach.
    max_size: the largest side tried.
    key: PRNG key; side `s` starts from `fold_in(key, s)`.
    guess: a side to try after `max_size`, or None.

  Returns:
    "found", "target"; "tried" (side -> whether it flipped); when found,
    the smallest flipping "size", its "row", "col", "patch"
    `[size, size, C]`, "patched" image `[H, W, C]`, "probability" of the
    target and "steps" (gradient steps of that side's search).
  """

  def probe(size):
    out = attack(image, target, size, jax.random.fold_in(key, size))
    tried[size] = bool(out["flipped"])
    return out

  tried: dict[int, bool] = {}
  best = probe(max_size)
  if not tried[max_size]:
    return {"found": False, "target": target, "tried": tried}
  lo, hi = 1, max_size
  hints = [] if guess is None else [guess]
  while lo < hi:
    hinted = bool(hints)
    size = min(max(hints.pop(), lo), hi - 1) if hinted else (lo + hi) // 2
    out = probe(size)
    if tried[size]:
      hi, best = size, out
    else:
      lo = size + 1
    if hinted and tried[size]:
      hints.append(size - 1)  # Walk down: flips are cheap, misses are not.
    elif hinted and size == guess:
      hints.append(size + 1)
  row, col = int(best["row"]), int(best["col"])
  return {
    "found": True,
    "target": target,
    "size": hi,
    "row": row,
    "col": col,
    "patch": np.asarray(best["content"])[row : row + hi, col : col + hi],
    "patched": np.asarray(best["patched"]),
    "probability": float(best["probs"][target]),
    "steps": int(best["steps"]),
    "tried": dict(sorted(tried.items())),
  }


def _check_search(image, label, max_size, grid, num_salient, num_steps, step):
  checks.check_int("label", label, minimum=0)
  side = min(image.shape[:2])
  checks.check_int("max_size", max_size, minimum=1, maximum=side)
  checks.check_int("grid", grid, minimum=1)
  checks.check_int("num_salient", num_salient, minimum=0)
  checks.check_int("num_steps", num_steps, minimum=1)
  checks.check_number("step_size", step, minimum=0, strict_minimum=True)


def _check_targets(apply_fn, image, label, targets) -> list[int]:
  """The targets (default: every class but `label`), checked."""
  probs = occlusion.probabilities(apply_fn, image[None], 1)[0]
  num_classes = probs.shape[0]
  checks.check_int("label", label, maximum=num_classes - 1)
  predicted = int(jnp.argmax(probs))
  if predicted != label:
    raise ValueError(
      f"image must be classified as label {label} to be flipped, but the "
      f"model predicts {predicted}."
    )
  if targets is None:
    return [k for k in range(num_classes) if k != label]
  checks.check_ints("targets", targets)
  for i, target in enumerate(targets):
    checks.check_int(
      f"targets[{i}]", target, minimum=0, maximum=num_classes - 1
    )
    if target == label:
      raise ValueError(f"targets[{i}] must differ from label {label}.")
  return [int(t) for t in targets]


def smallest_patches(
  apply_fn: ApplyFn,
  image: Any,
  label: int,
  *,
  targets: Sequence[int] | None = None,
  max_size: int | None = None,
  grid: int = 4,
  num_salient: int = 8,
  num_steps: int = 40,
  step_size: float = 0.1,
  seed: int = 0,
) -> dict[int, dict[str, Any]]:
  """The smallest optimised patch that flips `image` to each other class.

  Args:
    apply_fn: images `[B, H, W, C]` -> logits `[B, K]` (evaluation mode,
      each image's logits independent of the others in the batch).
    image: `[H, W, C]`, classified as `label`.
    label: its class.
    targets: the classes to reach (default: every class but `label`).
    max_size: the largest patch side (default: `min(H, W)`).
    grid: corners per axis of the regular grid of positions.
    num_salient: positions picked by the gradient's saliency.
    num_steps: the most gradient steps per side and target.
    step_size: the change of every pixel per step, > 0.
    seed: seed of the random starts.

  Returns:
    Target -> the result of `smallest_patch`; each target's search starts
    from the previous target's answer (`guess`), so the order of `targets`
    can change which sides are tried.

  Raises:
    ValueError: for an image that is not `[H, W, C]` or is not classified
      as `label`, a target outside `[0, K)` or equal to `label`, or a
      setting out of range.
    TypeError: for arguments of the wrong kind.
  """
  occlusion.check_apply_fn(apply_fn)
  image = occlusion.check_image(image)
  max_size = min(image.shape[:2]) if max_size is None else max_size
  _check_search(image, label, max_size, grid, num_salient, num_steps, step_size)
  checks.check_int("seed", seed, minimum=0)
  targets = _check_targets(apply_fn, image, label, targets)
  attack = make_patch_attack(
    apply_fn,
    grid=grid,
    num_salient=num_salient,
    num_steps=num_steps,
    step_size=step_size,
  )
  key = jax.random.key(seed)
  results, guess = {}, None
  for target in targets:
    results[int(target)] = smallest_patch(
      attack,
      image,
      int(target),
      max_size=max_size,
      key=jax.random.fold_in(key, target),
      guess=guess,
    )
    guess = results[int(target)].get("size", guess)
  return results
