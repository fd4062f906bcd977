"""`python -m xt_submit.cli ARGS` is `xt ARGS`."""
import sys

from xt_submit.cli.main import main

sys.exit(main())
