"""stexport.benchmarks: measured side by side, results under benchmarks/results/.

``run_bench(model, targets=[...], frames=..., out_dir=...)`` benchmarks one model (a registered name or a module)
against PyTorch eager; ``stexport bench ...`` and ``python -m stexport.benchmarks`` are the command lines.
"""

from __future__ import annotations

from typing import Any


def run_bench(*args: Any, **kwargs: Any) -> list[dict[str, Any]]:
    """See `stexport.benchmarks.suite.run_bench` (imported lazily: torch loads on first use)."""
    from stexport.benchmarks.suite import run_bench as _run

    return _run(*args, **kwargs)


__all__ = ["run_bench"]
