"""Looking inside trained models: probes, occlusion, adversarial patches and
pictures.

- `probes`: gradient norms per layer, activation saturation, intermediate
  outputs, shift-equivariance errors.
- `occlusion`: occlusion sensitivity maps (Zeiler & Fergus, ECCV 2014).
- `adversarial`: the smallest patch whose content flips a prediction.
- `metrics`: error, accuracy, confusion, prediction changes, invariance.
- `viz`: filters, feature maps, occlusion maps, curves, per-layer reports.
- `tables`: Markdown tables and float-level error figures.
"""
