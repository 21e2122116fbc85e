"""The interface the limiter uses: a request's whole admission at once, and its end at once."""

from __future__ import annotations

from typing import Any, Protocol

from .windows import Window

# A request's admission: slots (key, limit, ttl_s), window checks (key, expiry, limit) and the
# request windows it spends (key, expiry).
Slots = list[tuple[str, int, float]]
Checks = list[tuple[str, int, int]]
Hits = list[tuple[str, int]]
# What an admission answers: the slot ids taken, or the refusal: ("slot", i) or ("window", i, window).
Admitted = tuple[list[str], tuple[Any, ...] | None]


class AdmissionStore(Protocol):
    """Where a whole admission is taken at once, and a request's end given back at once: the
    ``sqlite.SQLiteStorage``, or ``redis.RedisAdmissions``."""

    def admit_all(
        self,
        slots: Slots,
        checks: Checks,
        hits: Hits,
        seen: list[Window] | None = None,
    ) -> Admitted: ...

    def finish_all(self, slots: list[tuple[str, str]], counted: list[tuple[str, int, int]]) -> None: ...

    def renew_all(self, slots: list[tuple[str, str]], ttl_s: float) -> int: ...
