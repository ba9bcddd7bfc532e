"""Looking inside trained models: probes, occlusion, adversarial patches and
pictures.

- `probes`: gradient norms per layer, activation saturation, intermediate
  outputs, shift-equivariance errors.
- `occlusion`: occlusion sensitivity maps (Zeiler & Fergus, ECCV 2014).
- `adversarial`: the smallest patch whose content flips a prediction.
- `metrics`: error, accuracy, confusion, prediction changes, invariance.
- `shift`: per-stage shift-equivariance errors of a CNN.
- `invariance`: rotation and mirror invariance of trained classifiers.
- `inspection`: filters, activations, occlusion and patches of one digit.
- `ensembling`: ensembles against their members.
- `ablation`: summaries of training ablations.
- `viz`: filters, feature maps, occlusion maps, curves, per-layer reports.
- `tables`: Markdown tables and float-level error figures.
"""
