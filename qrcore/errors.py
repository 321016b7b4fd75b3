"""The one exception type that carries a user-facing, one-line message."""


class QRNError(ValueError):
    """Bad input or environment: `str(err)` is a one-line message naming what is wrong and what to do.

    The CLI prints it and exits with code 2; the explorer shows it inline.
    """
