"""Azure Functions bindings for the XT pipeline (Python v2 model). Bindings only: each function
decodes its trigger, builds the ports once from the app settings, calls one handler, and logs one
audit line. The worker loads the app from the root script `xt_functions.py`."""
