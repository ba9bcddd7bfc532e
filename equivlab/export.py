"""`equivlab.export`, the pinned path of `equivlab.nn.export`."""

from equivlab.nn.export import *  # noqa: F403
from equivlab.nn.export import __all__  # noqa: F401
