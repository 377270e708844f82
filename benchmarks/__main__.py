"""``python -m stexport.benchmarks [options]``: the whole suite (every registered model unless --model is given)."""

from __future__ import annotations

import sys

from stexport.benchmarks.cli import main

if __name__ == "__main__":
    sys.exit(main(prog="python -m stexport.benchmarks"))
