"""equivlab: equivariant convolutions, scanned RNNs and DQN in pure JAX."""

__version__ = "0.2.0"
