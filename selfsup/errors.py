"""User-facing errors: one line that names the problem and the fix."""


class SelfSupError(Exception):
    """An error caused by the user's input (path, config, checkpoint, ...).

    The command line prints ``selfsup: error: <message>`` and exits with status 2,
    without a stack trace. The message must say what is wrong and how to fix it.
    """
