"""``stexport.train``: motion7 training and evaluation, which live in `stexport.motion7.train` (re-exported here;
``python -m stexport.train`` runs it)."""

import sys

from stexport.motion7.train import *  # noqa: F403
from stexport.motion7.train import main

if __name__ == "__main__":
    sys.exit(main())
