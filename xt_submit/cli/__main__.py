"""`python -m xt_submit.cli ARGS` is `xt ARGS`."""
from xt_submit.cli.main import run

run()
