"""hangproof.doctor."""
