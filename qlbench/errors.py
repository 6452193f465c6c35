"""The one exception a user's mistake raises: its message is a single line that names the problem."""


class QlbenchError(Exception):
    """A bad config, mask, bit width, path or name; the CLI prints it as one line and exits non-zero."""
