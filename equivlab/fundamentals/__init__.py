"""The training fundamentals, written out to be checked.

Reference code for the ideas under every network: hand-derived forward and
backward passes checked against `jax.grad` and finite differences, the
gradient check itself, the claims about adaptive optimisers, and the
initialisation studies. The library proper does not import this package.

- `derivations` / `conv_derivations`: hand-written backward passes.
- `gradcheck`: central finite differences.
- `optimizer_theory`: Adam's moments, Adam as AdaGrad, RMSProp,
  Robbins-Monro step sizes.
- `initialization`: depth studies of He, Glorot and naive initialisation.
"""
