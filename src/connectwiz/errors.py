"""The one exception type the CLI turns into a one-line message and exit code 2."""


class UserError(Exception):
    """Bad usage or bad input: the message is shown as is, without a traceback."""
