"""The `xt` command line: argument parsing, one module per command group, and what it prints."""
