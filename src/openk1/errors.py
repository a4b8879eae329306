"""User-facing errors: the CLI prints them on one line and exits with code 2."""


class OpenK1Error(Exception):
    """A problem with the user's input (file, row, field, config key, model directory)."""
