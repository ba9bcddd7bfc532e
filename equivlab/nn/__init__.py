"""Neural-network modules: thin flax.linen wrappers over the pure functions.

- `layers`: lifting and group convolutions, group batch norm, group and
  spatial pooling, and the P4CNN / P4MCNN of Cohen & Welling (ICML 2016).
- `models`: the classifier zoo (MLP, CNN, Z2CNN, deep nets, G-CNNs) by name.
- `normalization`: batch, layer, instance and group normalisation.
- `initializers`: the kernel initialisers by name.
- `export`: a group network as plain convolutions for deployment.
"""
