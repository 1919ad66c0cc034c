"""Placeholder: this part's commands are registered here."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add this part's commands to the ``hangproof`` app."""
