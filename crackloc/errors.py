"""The one error type users see: its message is printed as a single line by the CLI."""


class CracklocError(Exception):
    """A user-facing error (bad path, bad image, bad checkpoint, bad config)."""
