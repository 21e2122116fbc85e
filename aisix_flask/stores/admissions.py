"""The interface the limiter uses: a request's whole admission at once, and its end at once."""

from __future__ import annotations

from typing import Protocol


class AdmissionStore(Protocol):
    """Where a whole admission is taken at once, and a request's end given back at once: the
    ``sqlite.SQLiteStorage``, or ``redis.RedisAdmissions``."""

    def admit_all(
        self,
        slots: list[tuple[str, int, float]],
        checks: list[tuple[str, int, int]],
        hits: list[tuple[str, int]],
        seen: list | None = None,
    ) -> tuple[list[str], tuple | None]: ...

    def finish_all(self, slots: list[tuple[str, str]], counted: list[tuple[str, int, int]]) -> None: ...

    def renew_all(self, slots: list[tuple[str, str]], ttl_s: float) -> int: ...
