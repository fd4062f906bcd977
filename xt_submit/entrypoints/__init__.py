"""Process entry points other than the CLI: each parses its arguments or environment, asks
`bootstrap` for its parts, and hands over to the runtime. Nothing else."""
