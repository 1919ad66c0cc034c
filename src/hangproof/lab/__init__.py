"""hangproof.lab."""
