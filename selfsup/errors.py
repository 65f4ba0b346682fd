"""User-facing errors: one line that names the problem and the fix."""
import sys
from pathlib import Path


class SelfSupError(Exception):
    """An error caused by the user's input (path, config, checkpoint, ...).

    The command line prints ``selfsup: error: <message>`` and exits with status 2,
    without a stack trace. The message must say what is wrong and how to fix it.
    """


def script_main(main, *args) -> None:
    """Run the ``main`` of a benchmark or experiment script as the command line runs a command: a
    SelfSupError ends it with ``<script>: error: <message>`` on stderr and exit status 2, without a stack trace."""
    try:
        main(*args)
    except SelfSupError as exc:
        print(f"{Path(sys.argv[0]).name}: error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
