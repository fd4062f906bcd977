"""Azure Functions bindings for the XT pipeline (Python v2 model). Bindings only: each function
decodes its trigger, builds the ports once from the app settings, calls one handler, and logs one
audit line. The worker loads the app from the root script `xt_functions.py`.

Published from the repository root, the app imports `xt_submit` from this source tree (the app's
root is on the worker's path), where the handlers sit beside the package in `handlers/`; an
install maps them to `xt_submit.handlers` (pyproject's package-dir). Map them the same way here
when no install did.
"""
import importlib.util
import sys
from pathlib import Path


def _map_source_handlers() -> None:
    if importlib.util.find_spec("xt_submit.handlers") is not None:
        return  # installed (or an editable install): already mapped
    handlers = Path(__file__).resolve().parent.parent / "handlers"
    spec = importlib.util.spec_from_file_location("xt_submit.handlers", handlers / "__init__.py",
                                                  submodule_search_locations=[str(handlers)])
    if spec is None or spec.loader is None:
        raise ImportError(f"xt_submit.handlers: expected the handlers package at {handlers}")
    module = importlib.util.module_from_spec(spec)
    sys.modules["xt_submit.handlers"] = module
    spec.loader.exec_module(module)
    setattr(sys.modules["xt_submit"], "handlers", module)


_map_source_handlers()
