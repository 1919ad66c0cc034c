"""hangproof.amqp."""
