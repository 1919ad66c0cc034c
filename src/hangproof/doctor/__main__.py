"""``python -m hangproof.doctor``: the doctor alone, without the other parts' commands.

Useful in a minimal image (the DaemonSet) and in tests, where it does not depend
on the rest of the CLI importing cleanly. Same options, output and exit codes as
``hangproof doctor``:

    $ sudo python -m hangproof.doctor --netns hpdoc-x --json
"""

from __future__ import annotations

import sys

import typer

from hangproof.doctor.commands import doctor
from hangproof.errors import EXIT_USAGE, HangproofError


def main(argv: list[str] | None = None) -> int:
    """Run doctor as its own command; user errors are one line and exit 2."""
    import click

    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    app.command()(doctor)
    try:
        result = app(args=argv, standalone_mode=False, prog_name="hangproof doctor")
    except HangproofError as exc:
        print(f"hangproof: {exc}", file=sys.stderr)
        return exc.exit_code
    except typer.Exit as exc:
        return exc.exit_code
    except KeyboardInterrupt:
        print("hangproof: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        # typer vendors click in recent releases; accept either UsageError class.
        if isinstance(exc, click.ClickException) or type(exc).__name__.endswith("UsageError"):
            print(f"hangproof doctor: {exc}", file=sys.stderr)
            return EXIT_USAGE
        raise
    return result if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(main())
