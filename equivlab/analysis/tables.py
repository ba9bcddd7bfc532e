"""Tables as text: Markdown tables and float-level error figures.

What the experiments print and write next to their pictures
(`equivlab.analysis.viz`).
"""

from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["format_error", "format_table"]


def format_table(
  rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None
) -> str:
  """Renders rows of values as a GitHub-markdown table.

  Floats print with 4 significant decimals; strings and ints as they are.

  Args:
    rows: one mapping per row, column name -> value.
    columns: the columns in order; the keys of the first row by default.

  Returns:
    The table as one string (no trailing newline).

  Raises:
    ValueError: if `rows` is empty or a row lacks a column.
  """
  if not rows:
    raise ValueError("rows must hold at least one row, got none.")
  columns = list(columns or rows[0].keys())
  cells = []
  for n, row in enumerate(rows):
    missing = [c for c in columns if c not in row]
    if missing:
      raise ValueError(f"row {n} lacks columns {missing}; it has {list(row)}.")
    cells.append(
      [
        f"{v:.4f}" if isinstance(v, float) else str(v)
        for v in map(row.get, columns)
      ]
    )
  widths = [
    max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)
  ]
  line = lambda vals: (
    "| "
    + " | ".join(v.ljust(w) for v, w in zip(vals, widths, strict=True))
    + " |"
  )
  rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
  return "\n".join([line(columns), rule, *(line(r) for r in cells)])


def format_error(
  value: float, *, bound: float = 1e-5, spec: str = ".1e"
) -> str:
  """A relative error as a table prints it, the same on every machine.

  Errors below `bound` are float rounding, whose digits change with the CPU
  and XLA's choice of kernels: they print as "< 1e-05". Larger ones, which
  are properties of the network, print with the format `spec`.
  """
  if value >= bound:
    return format(value, spec)
  mantissa, exponent = f"{bound:.0e}".split("e")
  return f"< {mantissa}e{int(exponent)}"
