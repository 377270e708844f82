"""``stexport.motion``: the motion7 dataset, which lives in `stexport.motion7.data` (re-exported here)."""

from stexport.motion7.data import *  # noqa: F403
from stexport.motion7.data import __all__  # noqa: F401
