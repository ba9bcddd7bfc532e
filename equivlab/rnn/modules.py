"""The flax wrapper: a cell's parameters plus the scanned `unroll`."""

import flax.linen as nn

from equivlab import checks
from equivlab.rnn.cells import get_cell
from equivlab.rnn.scan import unroll


class Recurrent(nn.Module):
  """A thin flax wrapper: a cell's parameters plus `unroll`.

  Attributes:
    cell: "elman", "lstm" or "gru".
    hidden_size: H.
    time_major: layout of batched inputs and outputs.
    scan_unroll: `lax.scan`'s unroll factor.
  """

  cell: str = "elman"
  hidden_size: int = 32
  time_major: bool = False
  scan_unroll: int = 1

  @nn.compact
  def __call__(self, xs, carry0=None, lengths=None, reverse=False):
    """Runs the cell over `xs`.

    Args:
      xs: [T, D], or batched [B, T, D] / [T, B, D] by `time_major`.
      carry0: optional initial carry (zeros by default).
      lengths: optional valid lengths, [B] or a scalar.
      reverse: run backwards in time.

    Returns:
      `(final_carry, outputs)` as `unroll`.

    Raises:
      TypeError, ValueError: for an unknown cell, a hidden size below 1, or
        as `unroll`.
    """
    cell = get_cell(self.cell)
    checks.check_int("hidden_size", self.hidden_size, minimum=1)
    checks.check_rank("xs", xs, (2, 3), "[T, D], [B, T, D] or [T, B, D]")
    dim = xs.shape[-1]
    params = self.param(
      "cell", lambda k: cell.init(k, dim, self.hidden_size, dtype=xs.dtype)
    )
    if carry0 is None:
      if xs.ndim == 2:
        batch_shape = ()
      else:
        batch_shape = (xs.shape[1] if self.time_major else xs.shape[0],)
      carry0 = cell.zero_carry(self.hidden_size, batch_shape, xs.dtype)
    return unroll(
      cell.apply,
      params,
      xs,
      carry0,
      lengths=lengths,
      time_major=self.time_major,
      reverse=reverse,
      unroll=self.scan_unroll,
    )
