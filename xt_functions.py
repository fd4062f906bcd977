"""The Functions worker's entry script (PYTHON_SCRIPT_FILE_NAME=xt_functions.py): exactly one FunctionApp."""
from function_app.app import app

__all__ = ["app"]
