"""The routes the gateway serves: one module (and blueprint) per route; OpenAI's, and Anthropic's
Messages API (``messages``)."""
