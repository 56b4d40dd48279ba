"""The `jcw` command's dispatcher: wires each stage's subcommands into one entry point."""


class UserError(Exception):
    """A mistake in what the user asked for; printed as one sentence, exit status 2."""
