"""Equivariance property tests for your own models, chex-style.

For example::

    from equivlab import testing

    testing.assert_equivariant(jax.jit(my_layer), x, group="p4m",
                               input="image", output="p4m")
    testing.assert_invariant(functools.partial(model.apply, variables), x)
    testing.assert_module_equivariant(MyBlock(8), f, input="p4")

Each element g of p4 (rotations by 90 degrees) or p4m (and mirrors) acts on
the input and the output as the arrays carry it: "image" (`[N, H, W, C]`,
the (H, W) axes move), "p4" / "p4m" (group maps `[N, H, W, C, G]`: the
(H, W) axes move and the group axis is permuted exactly as
`equivlab.groups.act_on_map` and `equivlab.gconv.rotate_p4` define it) or
"invariant" (the output does not move). `shifts` adds circular
translations. Failures are an `AssertionError` naming the worst element
("rot 270", "mirror then rot 90", "shift (2, 3)"), its relative error and
the tolerance.

When a network is not equivariant,
`equivariance_report(model, variables, x)` measures every submodule's
output and names the first layer that breaks the symmetry, and why
("stride 2 on an even input").

Hypothesis strategies (images, group maps, group elements, convolution
shapes on which `gconv.is_exactly_equivariant` holds) live in
`equivlab.testing.strategies`, which needs the `test` extra (hypothesis);
this package itself does not.
"""

import importlib
from typing import Any

from equivlab.testing.equivariance import (
  ACTIONS,
  GROUPS,
  Measurement,
  assert_equivariant,
  assert_invariant,
  assert_not_equivariant,
  default_rtol,
  element_name,
  equivariance_error,
  relative_error,
  resolve_elements,
  worst,
)
from equivlab.testing.modules import (
  assert_module_equivariant,
  module_equivariance_errors,
)
from equivlab.testing.report import (
  Report,
  Row,
  equivariance_report,
  why_inexact,
)

__all__ = [
  "ACTIONS",
  "GROUPS",
  "Measurement",
  "Report",
  "Row",
  "assert_equivariant",
  "assert_invariant",
  "assert_module_equivariant",
  "assert_not_equivariant",
  "default_rtol",
  "element_name",
  "equivariance_error",
  "equivariance_report",
  "module_equivariance_errors",
  "relative_error",
  "resolve_elements",
  "strategies",
  "why_inexact",
  "worst",
]


def __getattr__(name: str) -> Any:
  # `equivlab.testing.strategies` imports hypothesis: load it on first use.
  if name == "strategies":
    return importlib.import_module("equivlab.testing.strategies")
  raise AttributeError(f"module 'equivlab.testing' has no attribute {name!r}")
