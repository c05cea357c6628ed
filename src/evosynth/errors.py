"""One exception type for user mistakes, so that the CLI can answer them in one line."""


class UserError(Exception):
    """A mistake in the user's input (config, flags, data, run directory), not a bug.

    The CLI prints its message on one line and exits with code 2; library users catch it.
    """
