"""Where the shared counters live: SQLite for one host, Redis for several.

``sqlite`` and ``redis`` hold the rate-limit windows and concurrency slots (``admissions`` is the
interface both give the limiter), ``spend`` the budgets' counters, ``idempotency`` the records of
Idempotency-Key; ``windows`` is the sliding-window arithmetic they share.
"""

from __future__ import annotations

import sqlite3

import redis

# What a store raises when it cannot answer (the file or the server), whichever the backend.
STORE_ERRORS = (sqlite3.Error, redis.RedisError)
