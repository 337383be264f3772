"""morphcli: reshape Keras networks to fit a FLOPs, size or latency budget.

Importing the package is cheap; TensorFlow loads on first use of a function.

The public API (one line each in the README's "From Python"): `Shrinker`
(shrink inside your own training), `expand`, `scale_width`, `search`, `cost`,
`report`, `analyze`, `export`, `load_model`, `with_input_shape`; lower-level
pieces below.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:  # what type checkers see; at run time `__getattr__` imports on first use
    from morphcli.api import analyze as analyze
    from morphcli.api import cost as cost
    from morphcli.api import expand as expand
    from morphcli.api import load_model as load_model
    from morphcli.api import report as report
    from morphcli.api import scale_width as scale_width
    from morphcli.api import search as search
    from morphcli.api import with_input_shape as with_input_shape
    from morphcli.config import load_config as load_config
    from morphcli.core.costs import CostModel as CostModel
    from morphcli.core.graph import build_graph as build_graph
    from morphcli.core.surgery import apply_structure as apply_structure
    from morphcli.core.surgery import resize as resize
    from morphcli.errors import MorphError as MorphError
    from morphcli.shrinker import Shrinker as Shrinker
    from morphcli.steps.expand import expand_model as expand_model
    from morphcli.steps.export import export as export
    from morphcli.training.regularizers import make_regularizer as make_regularizer

_API = {
    "Shrinker": "morphcli.shrinker",
    "load_model": "morphcli.api",
    "analyze": "morphcli.api",
    "cost": "morphcli.api",
    "report": "morphcli.api",
    "expand": "morphcli.api",
    "scale_width": "morphcli.api",
    "search": "morphcli.api",
    "with_input_shape": "morphcli.api",
    "build_graph": "morphcli.core.graph",
    "CostModel": "morphcli.core.costs",
    "apply_structure": "morphcli.core.surgery",
    "resize": "morphcli.core.surgery",
    "make_regularizer": "morphcli.training.regularizers",
    "expand_model": "morphcli.steps.expand",
    "export": "morphcli.steps.export",
    "load_config": "morphcli.config",
    "MorphError": "morphcli.errors",
}


def __getattr__(name: str) -> Any:
    import importlib

    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'morphcli' has no attribute {name!r}")


__all__ = sorted(_API)
