"""The one exception type that the CLI turns into a one-line message and exit code 2."""


class PrivferError(Exception):
    """Bad input or a refused operation. Its message is a single line naming the file and problem."""
