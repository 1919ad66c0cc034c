"""hangproof.guard."""
