"""Pictures and tables: filters, feature maps, occlusion maps, curves.

Every plotting function takes arrays and a path, draws on its own
`matplotlib.figure.Figure` (the Agg canvas: no display and no pyplot state),
writes a PNG and returns the path. `format_table` renders the tables the
experiments print. Most of these pictures (filters, feature maps, occlusion
maps) follow Zeiler & Fergus 2014, "Visualizing and Understanding
Convolutional Networks".
"""

import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib import colormaps, colors, ticker
from matplotlib.figure import Figure

PathLike = str | os.PathLike


def _save(fig: Figure, path: PathLike) -> str:
  """Writes `fig` to `path`; an OSError names the path and the reason."""
  path = os.fspath(path)
  directory = os.path.dirname(path)
  try:
    if directory:
      os.makedirs(directory, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
  except OSError as error:
    raise OSError(
      error.errno, f"cannot write the figure {path}: {error.strerror}"
    ) from None
  return path


def _grid(n: int, ncols: int | None) -> tuple[int, int]:
  ncols = ncols or math.ceil(math.sqrt(n))
  ncols = max(1, min(ncols, n))
  return math.ceil(n / ncols), ncols


def _no_ticks(ax) -> None:
  ax.set_xticks([])
  ax.set_yticks([])


def _scaled(panel: np.ndarray) -> np.ndarray:
  """`panel` mapped onto [0, 1] by its own range (a constant one: 0.5)."""
  lo, hi = float(panel.min()), float(panel.max())
  if hi <= lo:
    return np.full(panel.shape, 0.5, np.float32)
  return ((panel - lo) / (hi - lo)).astype(np.float32)


def _resized(panel: np.ndarray, h: int, w: int) -> np.ndarray:
  """`panel` `[h0, w0, ...]` resampled to `[h, w, ...]`, nearest neighbour."""
  rows = np.arange(h) * panel.shape[0] // h
  cols = np.arange(w) * panel.shape[1] // w
  return panel[rows][:, cols]


def _mosaic(
  cells: Sequence[tuple[int, int, np.ndarray]],
  rows: int,
  cols: int,
  *,
  gap: int = 1,
  gap_y: int | None = None,
) -> tuple[np.ndarray, int, int, int]:
  """Tiles RGBA panels into one white-backed RGBA image.

  A grid of panels drawn as one image costs one `imshow`; a grid of axes
  costs one layout and one draw per panel.

  Args:
    cells: `(row, col, rgba)` with `rgba` `[h, w, 4]`; panels of other
      sizes are resampled to the largest (nearest neighbour).
    rows, cols: the grid.
    gap: white pixels between columns.
    gap_y: white pixels between rows (and above the first), default `gap`.

  Returns:
    `(image, h, w, gap_y)`: the `[rows * (h + gap_y), cols * (w + gap) -
    gap, 4]` image and the cell size and row gap; panel `(r, c)` starts at
    row `gap_y + r * (h + gap_y)`, column `c * (w + gap)`.
  """
  h = max(panel.shape[0] for _, _, panel in cells)
  w = max(panel.shape[1] for _, _, panel in cells)
  gap_y = gap if gap_y is None else gap_y
  out = np.ones((rows * (h + gap_y), cols * (w + gap) - gap, 4), np.float32)
  for r, c, panel in cells:
    top, left = gap_y + r * (h + gap_y), c * (w + gap)
    out[top : top + h, left : left + w] = _resized(panel, h, w)
  return out, h, w, gap_y


def plot_filters(
  kernel: np.ndarray,
  path: PathLike,
  *,
  max_in: int = 8,
  max_out: int = 32,
  title: str | None = None,
) -> str:
  """Draws a convolution kernel as a grid of small grey images.

  Row `o`, column `i` shows `kernel[:, :, i, o]`, each on its own colour
  scale (dark = negative, light = positive), so the shape of every filter
  is visible whatever its norm. The grid is one image (fast for hundreds
  of filters), labelled "in i" / "out o" along its edges.

  Args:
    kernel: `[kh, kw, C_in, C_out]` (flax's Conv layout).
    path: where the PNG goes.
    max_in: at most this many input channels (columns) are drawn.
    max_out: at most this many output channels (rows) are drawn.
    title: figure title.

  Returns:
    `path` as a string.

  Raises:
    ValueError: if `kernel` is not rank 4.
  """
  kernel = np.asarray(kernel, np.float32)
  if kernel.ndim != 4:
    raise ValueError(
      f"kernel must be [kh, kw, C_in, C_out], got shape {kernel.shape}."
    )
  n_in = min(kernel.shape[2], max_in)
  n_out = min(kernel.shape[3], max_out)
  if n_in == 1:  # One input channel: lay the filters out in a square grid.
    rows, cols = _grid(n_out, None)
    cells = [(o // cols, o % cols, 0, o) for o in range(n_out)]
  else:
    rows, cols = n_out, n_in
    cells = [(o, i, i, o) for o in range(n_out) for i in range(n_in)]
  grey = colormaps["gray"]
  image, h, w, gap_y = _mosaic(
    [(r, c, grey(_scaled(kernel[:, :, i, o]))) for r, c, i, o in cells],
    rows,
    cols,
  )
  fig = Figure(figsize=(0.8 * cols + 0.8, 0.8 * rows + 0.8))
  ax = fig.add_subplot()
  ax.imshow(image, interpolation="nearest")
  if n_in > 1:
    ax.set_xticks([c * (w + 1) + (w - 1) / 2 for c in range(n_in)])
    ax.set_xticklabels([f"in {i}" for i in range(n_in)], fontsize=7)
    ax.xaxis.tick_top()
    ax.set_yticks([gap_y + r * (h + gap_y) + (h - 1) / 2 for r in range(n_out)])
    ax.set_yticklabels([f"out {o}" for o in range(n_out)], fontsize=7)
    ax.tick_params(length=0)
  else:
    _no_ticks(ax)
  for spine in ax.spines.values():
    spine.set_visible(False)
  shown = f"{n_out}/{kernel.shape[3]} out x {n_in}/{kernel.shape[2]} in"
  ax.set_title(f"{title or 'filters'} ({shown})", fontsize=10)
  return _save(fig, path)


def plot_feature_maps(
  maps: np.ndarray,
  path: PathLike,
  *,
  image: np.ndarray | None = None,
  max_maps: int = 32,
  ncols: int | None = 8,
  title: str | None = None,
) -> str:
  """Draws the channels of one feature map, optionally after the input.

  Every channel is on its own colour scale (viridis), the input in grey;
  the panels are one image, each captioned above (fast for many channels).

  Args:
    maps: `[H, W, C]` activations of one image.
    path: where the PNG goes.
    image: `[H0, W0]` or `[H0, W0, 1]` input drawn first, or None.
    max_maps: at most this many channels are drawn.
    ncols: panels per row.
    title: figure title.

  Returns:
    `path` as a string.

  Raises:
    ValueError: if `maps` is not rank 3.
  """
  maps = np.asarray(maps, np.float32)
  if maps.ndim != 3:
    raise ValueError(f"maps must be [H, W, C], got shape {maps.shape}.")
  viridis = colormaps["viridis"]
  panels = [
    viridis(_scaled(maps[:, :, c]))
    for c in range(min(maps.shape[-1], max_maps))
  ]
  names = [f"ch {c}" for c in range(len(panels))]
  if image is not None:
    image = np.asarray(image, np.float32).reshape(image.shape[:2])
    panels.insert(0, colormaps["gray"](_scaled(image)))
    names.insert(0, "input")
  rows, cols = _grid(len(panels), ncols)
  side = max(max(p.shape[:2]) for p in panels)
  gap = max(1, side // 8)
  mosaic, h, w, gap_y = _mosaic(
    [(n // cols, n % cols, p) for n, p in enumerate(panels)],
    rows,
    cols,
    gap=gap,
    gap_y=max(2, side // 3),
  )
  fig = Figure(figsize=(1.3 * cols, 1.4 * rows + 0.5))
  ax = fig.add_subplot()
  ax.imshow(mosaic, interpolation="nearest")
  ax.axis("off")
  for n, name in enumerate(names):
    r, c = divmod(n, cols)
    ax.text(
      c * (w + gap) + (w - 1) / 2,
      gap_y + r * (h + gap_y) - 1,
      name,
      fontsize=7,
      ha="center",
      va="bottom",
    )
  ax.set_title(title or "feature maps", fontsize=10)
  return _save(fig, path)


def plot_images(
  images: np.ndarray,
  path: PathLike,
  *,
  titles: Sequence[str] | None = None,
  ncols: int | None = None,
  title: str | None = None,
) -> str:
  """Draws a row (or grid) of grey images with a caption under each.

  Args:
    images: `[N, H, W]` or `[N, H, W, 1]`.
    path: where the PNG goes.
    titles: one caption per image, or None.
    ncols: panels per row (all in one row by default).
    title: figure title.

  Returns:
    `path` as a string.

  Raises:
    ValueError: if `images` is not rank 3 or 4, or `titles` has the wrong
      length.
  """
  images = np.asarray(images, np.float32)
  if images.ndim not in (3, 4):
    raise ValueError(
      f"images must be [N, H, W] or [N, H, W, 1], got shape {images.shape}."
    )
  if titles is not None and len(titles) != len(images):
    raise ValueError(
      f"need one title per image ({len(images)}), got {len(titles)}."
    )
  rows, cols = _grid(len(images), ncols or len(images))
  fig = Figure(figsize=(2.6 * cols, 2.6 * rows + 0.4), layout="constrained")
  axes = fig.subplots(rows, cols, squeeze=False)
  for ax in axes.ravel():
    ax.axis("off")
  for n, ax in enumerate(axes.ravel()[: len(images)]):
    ax.imshow(images[n].reshape(images.shape[1:3]), cmap="gray", vmin=0, vmax=1)
    if titles is not None:
      ax.set_title(titles[n], fontsize=8)
  if title:
    fig.suptitle(title, fontsize=10)
  return _save(fig, path)


def plot_occlusion(
  image: np.ndarray,
  maps: Mapping[str, np.ndarray],
  path: PathLike,
  *,
  label: int | None = None,
  patch_size: int | None = None,
  title: str | None = None,
) -> str:
  """Draws an image and its occlusion maps (Zeiler & Fergus 2014).

  Args:
    image: `[H, W]` or `[H, W, 1]`.
    maps: the dict of `equivlab.analysis.occlusion.occlusion_maps`: "true_prob",
      "top_prob" and "label", each `[H', W']`.
    path: where the PNG goes.
    label: the true class, for the captions.
    patch_size: the patch side, for the captions.
    title: figure title.

  Returns:
    `path` as a string.

  Raises:
    ValueError: if a map is missing.
  """
  missing = {"true_prob", "top_prob", "label"} - set(maps)
  if missing:
    raise ValueError(f"maps lacks {sorted(missing)}; got keys {sorted(maps)}.")
  image = np.asarray(image, np.float32)
  image = image.reshape(image.shape[:2])
  fig = Figure(figsize=(13.0, 3.6), layout="constrained")
  axes = fig.subplots(1, 4)
  axes[0].imshow(image, cmap="gray", vmin=0, vmax=1)
  axes[0].set_title(f"input (label {label})" if label is not None else "input")
  names = {
    "true_prob": f"(a) p(true class{'' if label is None else f' {label}'})",
    "top_prob": "(b) highest probability",
  }
  for ax, key in zip(axes[1:3], names, strict=True):
    # Each map on its own scale: small changes must stay visible.
    values = np.asarray(maps[key])
    shown = ax.imshow(values, cmap="inferno")
    ax.set_title(
      f"{names[key]}\nrange {values.min():.3g} to {values.max():.3g}"
    )
    fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.04)
  labels = np.asarray(maps["label"])
  cmap = colors.ListedColormap(
    [colors.to_rgb(f"C{k}") for k in range(10)], name="digits"
  )
  norm = colors.BoundaryNorm(np.arange(-0.5, 10.5), cmap.N)
  shown = axes[3].imshow(labels, cmap=cmap, norm=norm)
  axes[3].set_title("(c) predicted label\n")
  bar = fig.colorbar(shown, ax=axes[3], fraction=0.046, pad=0.04)
  bar.set_ticks(range(10))
  for ax in axes:
    _no_ticks(ax)
  caption = title or "occlusion sensitivity"
  if patch_size is not None:
    caption += f" (grey {patch_size}x{patch_size} patch centred at each pixel)"
  fig.suptitle(caption, fontsize=10)
  return _save(fig, path)


def plot_learning_curves(
  curves: Mapping[str, Sequence[float]],
  path: PathLike,
  *,
  xlabel: str = "epoch",
  ylabel: str = "value",
  title: str | None = None,
  log_y: bool = False,
  x: Sequence[float] | None = None,
) -> str:
  """Draws named series against `x` (default: 1, 2, ...), one line each.

  Args:
    curves: name -> values, e.g. {"z2cnn train loss": [...], ...}.
    path: where the PNG goes.
    xlabel: x-axis label.
    ylabel: y-axis label.
    title: figure title.
    log_y: logarithmic y axis.
    x: the x values shared by all series; a series may be shorter.

  Returns:
    `path` as a string.

  Raises:
    ValueError: if `curves` is empty or a series is longer than `x`.
  """
  if not curves:
    raise ValueError("curves must hold at least one series, got none.")
  longest = max(len(v) for v in curves.values())
  if x is not None and len(x) < longest:
    raise ValueError(
      f"x has {len(x)} values but a series has {longest}; need one x each."
    )
  fig = Figure(figsize=(6.4, 4.0))
  ax = fig.subplots()
  for name, values in curves.items():
    values = np.asarray(values, np.float64)
    xs = np.arange(1, len(values) + 1) if x is None else np.asarray(x)
    ax.plot(xs[: len(values)], values, marker=".", label=name)
  if x is None or all(float(v).is_integer() for v in x):
    ax.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
  if log_y:
    ax.set_yscale("log")
  ax.set_xlabel(xlabel)
  ax.set_ylabel(ylabel)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  if title:
    ax.set_title(title)
  return _save(fig, path)


def plot_bars(
  names: Sequence[str],
  series: Mapping[str, Sequence[float]],
  path: PathLike,
  *,
  errors: Mapping[str, Sequence[float]] | None = None,
  ylabel: str = "value",
  title: str | None = None,
  value_format: str = "{:.3g}",
) -> str:
  """Grouped bars: one group per name, one bar per series, values on top.

  Args:
    names: group labels (e.g. model names).
    series: series name -> one value per group (e.g. {"test": [...],
      "shifted test": [...]}).
    path: where the PNG goes.
    errors: series name -> half-heights of error bars (e.g. standard
      deviations), for any subset of the series; or None.
    ylabel: y-axis label.
    title: figure title.
    value_format: format of the value printed over each bar.

  Returns:
    `path` as a string.

  Raises:
    ValueError: if `series` is empty or a series (or its errors) does not
      have one value per name.
  """
  if not series:
    raise ValueError("series must hold at least one series, got none.")
  errors = dict(errors or {})
  for key, values in [*series.items(), *errors.items()]:
    if len(values) != len(names):
      raise ValueError(
        f"series {key!r} needs one value per name ({len(names)}), got "
        f"{len(values)}."
      )
  fig = Figure(figsize=(1.3 * len(names) * len(series) ** 0.5 + 2.5, 3.8))
  ax = fig.subplots()
  x = np.arange(len(names))
  width = 0.8 / len(series)
  for i, (key, values) in enumerate(series.items()):
    bars = ax.bar(
      x + (i - (len(series) - 1) / 2) * width,
      values,
      width,
      yerr=errors.get(key),
      capsize=3,
      label=key,
      color=f"C{i}",
    )
    ax.bar_label(
      bars, labels=[value_format.format(v) for v in values], fontsize=7
    )
  ax.set_xticks(x, names)
  ax.set_ylabel(ylabel)
  ax.grid(axis="y", alpha=0.3)
  ax.margins(y=0.12)
  if len(series) > 1:
    ax.legend(fontsize=8)
  if title:
    ax.set_title(title)
  return _save(fig, path)


def plot_equivariance_report(
  report: Any, path: PathLike, *, title: str | None = None
) -> str:
  """Equivariance error per layer on a log axis, with the float-error band.

  Args:
    report: an `equivlab.testing.equivariance_report` result, or its
      `to_dict()` (as the experiments write it to JSON).
    path: where the PNG goes.
    title: figure title.

  Returns:
    `path` as a string.

  Raises:
    ValueError: if the report measured no row.
  """
  data = report.to_dict() if hasattr(report, "to_dict") else dict(report)
  rows = [r for r in data["rows"] if r["error"] is not None]
  if not rows:
    raise ValueError("the report has no measured row to plot.")
  floor = data["rtol"] * 1e-6 if data["rtol"] > 0 else 1e-18
  errors = [max(float(r["error"]), floor) for r in rows]
  names = [r["path"] or "(output)" for r in rows]
  broken = data.get("first_break_path")
  fig = Figure(figsize=(max(4.0, 0.45 * len(rows) + 2.0), 4.2))
  ax = fig.subplots()
  x = np.arange(len(rows))
  ax.axhspan(floor, data["rtol"], color="C2", alpha=0.15, label="float error")
  colours = ["C3" if not (e <= data["rtol"]) else "C0" for e in errors]
  ax.plot(x, errors, color="0.6", lw=1, zorder=1)
  ax.scatter(x, errors, c=colours, zorder=2)
  for i, r in enumerate(rows):
    if r["exact_expected"] is False:
      ax.annotate(
        "inexact",
        (i, errors[i]),
        fontsize=7,
        xytext=(3, 4),
        textcoords="offset points",
      )
  if broken is not None and broken in [r["path"] for r in rows]:
    i = [r["path"] for r in rows].index(broken)
    ax.axvline(i, color="C3", ls="--", lw=1, label="first break")
  ax.set_yscale("log")
  ax.set_xticks(x, names, rotation=60, ha="right", fontsize=7)
  ax.set_ylabel("worst relative error")
  ax.grid(axis="y", alpha=0.3)
  ax.legend(fontsize=8, loc="upper left")
  ax.set_title(title or f"equivariance per layer ({data['group']})")
  return _save(fig, path)


def plot_predictions(
  images: np.ndarray,
  path: PathLike,
  *,
  predictions: Mapping[str, Sequence[int]],
  captions: Sequence[str],
  ncols: int = 4,
  title: str | None = None,
) -> str:
  """Images, each captioned with its own line and every model's prediction.

  Args:
    images: `[N, H, W]` or `[N, H, W, 1]`.
    path: where the PNG goes.
    predictions: model name -> one predicted class per image (at least N).
    captions: the first caption line of each image (e.g. "label 6").
    ncols: panels per row.
    title: figure title.

  Returns:
    `path` as a string.

  Raises:
    ValueError: if `captions` or a model's predictions are fewer than the
      images (and as `plot_images`).
  """
  short = [m for m, p in predictions.items() if len(p) < len(images)]
  if len(captions) != len(images) or short:
    raise ValueError(
      f"need a caption and a prediction of every model per image "
      f"({len(images)}), got {len(captions)} captions; short: {short}."
    )
  titles = [
    "\n".join([caption] + [f"{m}: {p[i]}" for m, p in predictions.items()])
    for i, caption in enumerate(captions)
  ]
  return plot_images(
    images, path, titles=titles, ncols=min(ncols, len(images)), title=title
  )


def plot_curve_panels(
  panels: Mapping[str, Mapping[str, Sequence[float]]],
  path: PathLike,
  *,
  x: Sequence[float] | None = None,
  xticks: Sequence[str] | None = None,
  bands: Mapping[str, Mapping[str, tuple[Sequence, Sequence]]] | None = None,
  xlabel: str | None = None,
  ylabel: str | None = None,
  log_y: bool = False,
  sharey: bool = False,
  ncols: int = 4,
  title: str | None = None,
) -> str:
  """One panel per key, several named curves in each.

  Args:
    panels: panel title -> curve name -> values.
    path: where the PNG goes.
    x: the x values of every curve (default 1, 2, ...).
    xticks: labels of the x positions 0, 1, ... instead of numbers.
    bands: panel title -> curve name -> (low, high), shaded around it.
    xlabel: x-axis label of every panel.
    ylabel: y-axis label of the first panel of each row.
    log_y: logarithmic y axes; values <= 0 cannot show on them.
    sharey: one y range for every panel.
    ncols: panels per row.
    title: figure title.

  Returns:
    `path` as a string.

  Raises:
    ValueError: if `panels` or a panel is empty.
  """
  if not panels or not all(panels.values()):
    raise ValueError("panels must hold curves in every panel, got none.")
  rows, cols = _grid(len(panels), ncols)
  fig = Figure(figsize=(3.6 * cols, 3.0 * rows + 0.4), layout="constrained")
  axes = fig.subplots(rows, cols, squeeze=False, sharey=sharey).ravel()
  for ax in axes[len(panels) :]:
    ax.axis("off")
  for n, (ax, (name, curves)) in enumerate(
    zip(axes, panels.items(), strict=False)
  ):
    for i, (label, values) in enumerate(curves.items()):
      if xticks is not None:
        xs = np.arange(len(values))
      else:
        xs = np.arange(1, len(values) + 1) if x is None else np.asarray(x)
      ax.plot(xs, values, marker=".", color=f"C{i}", label=label)
      low_high = (bands or {}).get(name, {}).get(label)
      if low_high is not None:
        ax.fill_between(xs, *low_high, color=f"C{i}", alpha=0.2)
    if xticks is not None:
      ax.set_xticks(range(len(xticks)), xticks, fontsize=8)
    if log_y:
      ax.set_yscale("log")
    ax.set_title(name, fontsize=9)
    ax.set_xlabel(xlabel or "", fontsize=8)
    if n % cols == 0:
      ax.set_ylabel(ylabel or "", fontsize=8)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
  if title:
    fig.suptitle(title, fontsize=9)
  return _save(fig, path)
