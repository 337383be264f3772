"""morphcli: reshape Keras networks to fit a FLOPs, size or latency budget.

Importing the package is cheap; TensorFlow loads on first use of a function.
"""

from __future__ import annotations

__version__ = "0.1.0"

_API = {
    "load_model": "morphcli.api",
    "analyze": "morphcli.api",
    "cost": "morphcli.api",
    "with_input_shape": "morphcli.api",
    "build_graph": "morphcli.core.graph",
    "CostModel": "morphcli.core.costs",
    "apply_structure": "morphcli.core.surgery",
    "resize": "morphcli.core.surgery",
    "make_regularizer": "morphcli.training.regularizers",
    "expand_model": "morphcli.steps.expand",
    "load_config": "morphcli.config",
    "MorphError": "morphcli.errors",
}


def __getattr__(name: str):
    import importlib

    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'morphcli' has no attribute {name!r}")


__all__ = sorted(_API)
