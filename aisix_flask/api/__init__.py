"""The OpenAI routes the gateway serves: one module (and blueprint) per route."""
