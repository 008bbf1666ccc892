"""The one exception type of user errors."""


class MtbenchError(Exception):
    """An error caused by the user's input (config, files): reported as one line, no traceback."""
