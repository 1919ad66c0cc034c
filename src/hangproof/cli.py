"""The one ``hangproof`` command. Each part registers its own sub-commands.

Contract (ARCHITECTURE.md): every report takes ``--json`` (JSON on stdout,
progress on stderr); exit 0 healthy, 1 fault/finding, 2 usage or environment.
"""

from __future__ import annotations

import importlib
import sys
from importlib import metadata

import typer

from hangproof.errors import EXIT_USAGE, HangproofError

app = typer.Typer(
    name="hangproof",
    help="Find, explain and prevent silent hangs of AMQP (Celery) consumers.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def installed_version() -> str:
    """The installed distribution's version (pyproject), else the package's own.

    >>> installed_version() == __import__("hangproof").__version__
    True
    """
    try:
        return metadata.version("hangproof")
    except metadata.PackageNotFoundError:  # run from a source tree that is not installed
        import hangproof

        return hangproof.__version__


def _print_version(value: bool) -> None:
    if value:
        print(f"hangproof {installed_version()}")
        raise typer.Exit(0)


@app.callback()
def _root(
    version: bool = typer.Option(
        False,
        "--version",
        callback=_print_version,
        is_eager=True,
        help="Print the version and exit.",
    ),
) -> None:
    """Find, explain and prevent silent hangs of AMQP (Celery) consumers."""
    # A callback keeps `hangproof` a group even if only one part registers.


#: Modules that define ``register(app)``. Each part owns its module.
COMMAND_MODULES = (
    "hangproof.lab.commands",
    "hangproof.probe_cli",
    "hangproof.doctor.commands",
    "hangproof.guard.commands",
)

for _name in COMMAND_MODULES:
    importlib.import_module(_name).register(app)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script. User errors never show a traceback."""
    try:
        result = app(args=argv, standalone_mode=False)
    except HangproofError as exc:
        print(f"hangproof: {exc}", file=sys.stderr)
        return exc.exit_code
    except typer.Exit as exc:
        return exc.exit_code
    except (typer.Abort, KeyboardInterrupt):
        print("hangproof: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        # Usage errors (click's, vendored by typer >= 0.20 as typer._click)
        # arrive here in non-standalone mode; recognise them by their interface.
        if hasattr(exc, "show") and hasattr(exc, "exit_code"):
            if "unexpected extra argument" in str(exc):
                # Usually a URL the shell split at a space in its password: click
                # would echo the tail of the password.
                print(
                    "hangproof: unexpected extra argument(s), not shown (one may be part of "
                    "a password the shell split at a space): check the quoting; `hangproof "
                    "probe` also reads the URL from --url-file or $HANGPROOF_URL",
                    file=sys.stderr,
                )
                return EXIT_USAGE
            exc.show()
            return EXIT_USAGE
        raise
    return result if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(main())
