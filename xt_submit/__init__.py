"""XT: experiment tools. `from xt_submit import Run` inside a training script."""

__version__ = "0.1.0"
__all__ = ["Run", "list_jobs", "list_runs", "metrics", "report"]


def __getattr__(name: str):
    # Lazy, so `import xt_submit` (the CLI, the run wrapper, a box) does not pay for what it does not use.
    if name == "Run":
        from xt_submit.node_kit.run_api import Run

        return Run
    if name in ("list_jobs", "list_runs", "metrics", "report"):  # the notebook API (xt_submit/api.py)
        from xt_submit import api

        return getattr(api, name)
    raise AttributeError(f"module 'xt_submit' has no attribute {name!r}")
