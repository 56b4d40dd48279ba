"""The `jcw` command's dispatcher: wires each stage's subcommands into one entry point."""
