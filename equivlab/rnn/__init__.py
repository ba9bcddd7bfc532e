"""Scanned recurrent networks and hand-written backpropagation through time.

Pure functions first: cells `(params, carry, x) -> (carry, output)` for the
Elman (tanh), LSTM and GRU recurrences, one `unroll` over any cell built on
`jax.lax.scan`, the Elman network (`elman_loss`, `elman_bptt`), truncated
BPTT, a probe of how the gradient of the last loss decays back in time, and
echo-state networks. The flax module `Recurrent` is a thin wrapper over the
same functions.

Notation (one sequence; batch with `jax.vmap`):

  h_t = tanh(W_xh x_t + W_hh h_{t-1} + b_h),  z_t = softmax(W_hz h_t + b_z),
  L = sum_t -log z_t[y_t].

Weight matrices are stored (out, in), as in the equations, so a cell computes
`W @ x` on one example.

Modules: `cells` (cells and their initialisers), `scan` (`unroll`,
`elman_unroll`, `sequence_mask`), `bptt` (`elman_loss`, `elman_bptt` and
their batched forms; the label contract under `jit`/`vmap` and the
`checked=True` path are described there), `tbptt` (truncated BPTT), `probes`
(`carry_gradient_norms`), `esn` (echo-state networks), `modules` (the flax
wrapper). Every public name is re-exported here: `rnn.elman_loss(...)`.
"""

from equivlab.rnn import esn
from equivlab.rnn.bptt import (
  elman_bptt,
  elman_bptt_batch,
  elman_logits,
  elman_loss,
  elman_loss_batch,
)
from equivlab.rnn.cells import (
  CELLS,
  ELMAN_KEYS,
  Cell,
  CellFn,
  LSTMState,
  Params,
  PyTree,
  elman_cell,
  get_cell,
  gru_cell,
  init_elman,
  init_gru,
  init_lstm,
  lstm_cell,
)
from equivlab.rnn.esn import (
  compute_spectral_radius,
  esn_cell,
  esn_states,
  gradient_readout,
  init_esn,
  readout_apply,
  ridge_readout,
)
from equivlab.rnn.gradient_flow import carry_gradient_norms
from equivlab.rnn.modules import Recurrent
from equivlab.rnn.scan import elman_unroll, sequence_mask, unroll
from equivlab.rnn.tbptt import (
  elman_segment_loss,
  elman_tbptt,
  tbptt_grads,
  tbptt_train,
)

__all__ = [
  "CELLS",
  "ELMAN_KEYS",
  "Cell",
  "CellFn",
  "LSTMState",
  "Params",
  "PyTree",
  "Recurrent",
  "carry_gradient_norms",
  "compute_spectral_radius",
  "elman_bptt",
  "elman_bptt_batch",
  "elman_cell",
  "elman_logits",
  "elman_loss",
  "elman_loss_batch",
  "elman_segment_loss",
  "elman_tbptt",
  "elman_unroll",
  "esn",
  "esn_cell",
  "esn_states",
  "get_cell",
  "gradient_readout",
  "gru_cell",
  "init_elman",
  "init_esn",
  "init_gru",
  "init_lstm",
  "lstm_cell",
  "readout_apply",
  "ridge_readout",
  "sequence_mask",
  "tbptt_grads",
  "tbptt_train",
  "unroll",
]
