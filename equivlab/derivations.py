"""`equivlab.derivations`, the pinned path of the hand-derived passes.

The functions live in `equivlab.fundamentals.derivations` and
`equivlab.fundamentals.conv_derivations`.
"""

from equivlab.fundamentals.derivations import *  # noqa: F403
from equivlab.fundamentals.derivations import __all__  # noqa: F401
