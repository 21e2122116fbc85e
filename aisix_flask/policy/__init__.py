"""Request-side policy: caller keys, guardrails and PII, rate limits, idempotency keys."""
