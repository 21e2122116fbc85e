"""The limiter's stores, SQLite and Redis alike: windows, slots, batches, the rate-limit headers
they give, and the arithmetic behind Retry-After."""

from __future__ import annotations

import math
import re
import sqlite3
import time
import uuid

import pytest

from aisix_flask.config.resources import RateLimit
from aisix_flask.errors import RateLimited
from aisix_flask.policy.limits import Limiter, Scope
from aisix_flask.policy.windows import seconds_until_free

from .conftest import away_from_a_minute_boundary


@pytest.fixture(autouse=True)
def _clear_of_window_edges():
    away_from_a_minute_boundary()


@pytest.mark.parametrize(
    ("window", "limit", "expected"),
    [
        ((0, 0.0, 0, 0.0), 5, 0.0),  # empty
        ((0, 0.0, 4, 90.0), 5, 0.0),  # room left
        ((0, 0.0, 5, 90.0), 5, 30.0),  # full: wait until this window ends (90 - 60)
        ((12, 30.0, 0, 90.0), 5, 5.0),  # previous weighs 12*30/60=6: 12*(30-t)/60 < 5 → t > 5
        ((10, 30.0, 0, 90.0), 5, 0.0),  # weighs floor(5.0): a moment later it is 4.99
        ((10, 30.0, 2, 90.0), 5, 12.0),  # 10*(30-t)/60 + 2 < 5 → t > 12
        ((10, 30.0, 5, 90.0), 5, 30.0),  # current is full: wait for the roll-over…
        ((10, 30.0, 6, 90.0), 5, 40.0),  # …and for 6*(60-(t-30))/60 < 5 → t > 40
    ],
)
def test_seconds_until_free(window, limit, expected):
    assert seconds_until_free(window, 60, limit) == pytest.approx(expected, abs=0.002)


REDIS_URL = "redis://127.0.0.1:6379/15"


@pytest.fixture(params=["sqlite", "redis"])
def limiter(request, tmp_path):
    """A Limiter on each backend; names are unique per test so Redis runs do not meet."""
    url = f"sqlite:///{tmp_path}/rl.db" if request.param == "sqlite" else REDIS_URL
    limiter = Limiter(url)
    assert limiter.ping(), f"{url} is not reachable (.ci/run starts Redis)"
    yield limiter
    if request.param == "redis":
        limiter.storage.get_connection().flushdb()


def scope(**limits) -> list[Scope]:
    return [Scope("key", f"k-{uuid.uuid4().hex[:8]}", RateLimit(**limits))]


def refused(limiter, scopes) -> int:
    with pytest.raises(RateLimited) as info:
        limiter.admit(scopes, 60)
    return int(info.value.extra_headers["Retry-After"])


def test_backend_rpm_and_retry_after(limiter):
    scopes = scope(rpm=3)
    started = time.time()
    for _ in range(3):
        limiter.admit(scopes, 60)
    wait = refused(limiter, scopes)
    if limiter.url.startswith("redis"):
        # Redis windows start at the first hit: full again 60 s after it.
        assert 59 <= wait + (time.time() - started) <= 61.5
    else:
        assert abs(wait - math.ceil(60 - time.time() % 60)) <= 1  # aligned minute windows


def test_backend_tokens_are_charged_after_the_answer(limiter):
    scopes = scope(tpm=500, tpd=10_000)
    for _ in range(2):
        limiter.finish(limiter.admit(scopes, 60), tokens=300)
    assert refused(limiter, scopes) >= 1


def test_backend_finish_counts_the_tokens_and_gives_back_the_slots(limiter):
    scopes = scope(tpm=500, concurrency=1)
    admission = limiter.admit(scopes, 60)
    with pytest.raises(RateLimited, match="concurrent requests"):
        limiter.admit(scopes, 60)
    limiter.finish(admission, tokens=600)
    assert admission.slots == []
    with pytest.raises(RateLimited, match="tokens per minute"):  # the slot is free, the tokens spent
        limiter.admit(scopes, 60)


def test_backend_windows_are_the_ones_limits_reads(limiter):
    """Both stores keep the windows where ``limits``' own storage finds them."""
    from limits import RateLimitItemPerMinute

    scopes = scope(rpm=10, tpm=1000)
    limiter.finish(limiter.admit(scopes, 60), tokens=300)
    limiter.admit(scopes, 60)
    name = scopes[0].name
    rpm = RateLimitItemPerMinute(10, namespace="aisix").key_for("key", name)
    tpm = RateLimitItemPerMinute(1000, namespace="aisix").key_for("key", name)
    assert limiter.storage.get_sliding_window(rpm, 60)[2] == 2
    assert limiter.storage.get_sliding_window(tpm, 60)[2] == 300


def test_backend_concurrency_slots(limiter):
    scopes = scope(concurrency=2)
    first, second = limiter.admit(scopes, 60), limiter.admit(scopes, 60)
    assert refused(limiter, scopes) == 1
    limiter.finish(first)
    third = limiter.admit(scopes, 60)
    limiter.finish(second)
    limiter.finish(third)
    crashed = [limiter.admit(scopes, 0.2), limiter.admit(scopes, 0.2)]
    assert refused(limiter, scopes) == 1
    time.sleep(0.3)  # both holders "crashed": their slots expire
    limiter.admit(scopes, 60)
    for admission in crashed:  # given back late: nothing more to give back
        limiter.finish(admission)
    limiter.admit(scopes, 60)
    assert refused(limiter, scopes) == 1


def test_backend_renewed_slots_outlive_their_first_lease(limiter):
    """A stream's slots are leased and renewed: a renewed slot is still held past its first lease;
    one already given back is not taken again by a late renewal."""
    scopes = scope(concurrency=1)
    running = limiter.admit(scopes, 1)
    assert limiter.store.renew_all(running.slots, 60) == 1
    time.sleep(1.2)  # past the first lease
    assert refused(limiter, scopes) == 1
    slots = list(running.slots)
    limiter.finish(running)
    assert limiter.store.renew_all(slots, 60) == 0  # a renewal that comes after the release
    limiter.finish(limiter.admit(scopes, 60))
    limiter.renew(running, 60)  # nothing held: nothing to do
    lapsed = limiter.admit(scopes, 0.2)
    time.sleep(0.3)
    assert limiter.store.renew_all(lapsed.slots, 60) == 0  # past its time: not taken again
    limiter.admit(scopes, 60)


def test_slot_counts_are_recounted_when_the_file_is_opened(tmp_path):
    """A file whose slots were written without their counts (an earlier version) is counted
    again when a process opens it: the slots held still hold."""
    path = tmp_path / "rl.db"
    Limiter(f"sqlite:///{path}")
    with sqlite3.connect(path) as db:
        for drop in ("TRIGGER slot_taken", "TRIGGER slot_given_back", "TABLE slots_taken"):
            db.execute(f"DROP {drop}")  # the file as an earlier version left it
        db.executemany(
            "INSERT INTO slots VALUES ('key:old', ?, ?)",
            [("a", time.time() + 60), ("b", time.time() + 60)],
        )
    scopes = [Scope("key", "old", RateLimit(concurrency=3))]
    limiter = Limiter(f"sqlite:///{path}")
    limiter.admit(scopes, 60)
    assert refused(limiter, scopes) == 1


# -- SQLite batches: every admission and release waiting in a process goes in one transaction --


def test_a_batch_decides_each_admission_on_what_the_ones_before_it_left(tmp_path):
    from aisix_flask.stores.sqlite import SQLiteStorage
    from aisix_flask.stores.sqlite_admissions import _Batched

    store = SQLiteStorage(f"sqlite:///{tmp_path}/rl.db")
    (held,), _ = store.admit_all([("k", 1, 60)], [], [])
    batch = [
        _Batched(releases=[("k", held)]),  # released first: the next admission may take it
        _Batched(admission=([("k", 1, 60)], [], [])),
        _Batched(admission=([("k", 1, 60)], [], [])),  # the slot the one before took
        _Batched(admission=([], [("w", 60, 1)], [("w", 60)])),
        _Batched(admission=([], [("w", 60, 1)], [("w", 60)])),  # its window spent just before
        _Batched(admission=([("k", 1, 60)], [], [])),  # refusals spent nothing
    ]
    store._pending.extend(batch)
    store._run_pending()
    outcomes = [operation.result for operation in batch]
    assert all(operation.done and operation.error is None for operation in batch)
    assert outcomes[1][1] is None and len(outcomes[1][0]) == 1
    assert outcomes[2] == ([], ("slot", 0))
    assert outcomes[3] == ([], None)
    assert outcomes[4][0] == [] and outcomes[4][1][:2] == ("window", 0)
    assert outcomes[5] == ([], ("slot", 0))
    # Committed: the store agrees with the batch.
    assert store.admit_all([("k", 1, 60)], [], [])[1] == ("slot", 0)
    assert store.get_sliding_window("w", 60)[2] == 1


def test_tokens_counted_in_a_batch_count_for_the_admissions_after_them(tmp_path):
    from aisix_flask.stores.sqlite import SQLiteStorage
    from aisix_flask.stores.sqlite_admissions import _Batched

    store = SQLiteStorage(f"sqlite:///{tmp_path}/rl.db")
    (held,), _ = store.admit_all([("k", 1, 60)], [("t", 60, 500)], [])
    batch = [
        _Batched(releases=[("k", held)], adds=[("t", 60, 600)]),  # a request finishing
        _Batched(admission=([("k", 1, 60)], [("t", 60, 500)], [])),
    ]
    store._pending.extend(batch)
    store._run_pending()
    assert batch[1].result[0] == [] and batch[1].result[1][:2] == ("window", 0)
    assert store.get_sliding_window("t", 60)[2] == 600
    assert store.admit_all([("k", 1, 60)], [], [])[1] is None  # the slot was given back


def test_a_failed_batch_fails_every_operation_in_it(tmp_path, monkeypatch):
    from aisix_flask.stores.sqlite import SQLiteStorage

    store = SQLiteStorage(f"sqlite:///{tmp_path}/rl.db")

    def broken(*args):
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(store, "_run_batch", broken)
    with pytest.raises(sqlite3.OperationalError):
        store.admit_all([("k", 1, 60)], [], [])
    with pytest.raises(sqlite3.OperationalError):
        store.finish_all([("k", "x")], [])
    assert not store._pending


def test_threads_admitting_at_once_never_hold_more_than_the_limit(tmp_path):
    """32 threads taking and giving back slots of one key with a limit of 3, through the batches."""
    import threading

    limiter = Limiter(f"sqlite:///{tmp_path}/rl.db")
    scopes = [Scope("key", "busy", RateLimit(concurrency=3))]
    lock, holding, most, admitted, refusals = threading.Lock(), [0], [0], [0], [0]

    def client() -> None:
        for _ in range(60):
            try:
                admission = limiter.admit(scopes, 60)
            except RateLimited:
                with lock:
                    refusals[0] += 1
                continue
            with lock:
                holding[0] += 1
                admitted[0] += 1
                most[0] = max(most[0], holding[0])
            time.sleep(0.0005)
            with lock:
                holding[0] -= 1
            limiter.finish(admission)

    threads = [threading.Thread(target=client) for _ in range(32)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert most[0] == 3 and admitted[0] >= 60 and refusals[0] > 0
    assert admitted[0] + refusals[0] == 32 * 60
    assert limiter.storage._read("SELECT count(*) FROM slots", ()) == [(0,)]  # all given back


def test_rate_limit_headers_name_the_tightest_windows(limiter):
    """OpenAI's x-ratelimit-*: the window with the least left, of requests and of tokens, on both
    stores; a refusal says 0 left."""
    away_from_a_minute_boundary()
    name = f"k-{uuid.uuid4().hex[:8]}"
    scopes = [Scope("key", name, RateLimit(rpm=10, tpm=1000)), Scope("model", name, RateLimit(rpm=4))]
    first = limiter.admit(scopes, 60)
    assert first.headers["x-ratelimit-limit-requests"] == "4"
    assert first.headers["x-ratelimit-remaining-requests"] == "3"
    assert (first.headers["x-ratelimit-limit-tokens"], first.headers["x-ratelimit-remaining-tokens"]) == (
        "1000",
        "1000",
    )
    assert first.headers["x-ratelimit-reset-requests"].endswith("s")
    limiter.finish(first, tokens=300)
    second = limiter.admit(scopes, 60)
    assert (
        second.headers["x-ratelimit-remaining-requests"],
        second.headers["x-ratelimit-remaining-tokens"],
    ) == (
        "2",
        "700",
    )
    limiter.admit(scopes, 60), limiter.admit(scopes, 60)
    with pytest.raises(RateLimited) as info:
        limiter.admit(scopes, 60)
    assert info.value.extra_headers["x-ratelimit-remaining-requests"] == "0"
    assert info.value.extra_headers["x-ratelimit-limit-requests"] == "4"
    # Reset means the same on a refusal as on an answer: until the full allowance is back, which
    # three more requests in the same window cannot have brought closer.
    reset = seconds_of(info.value.extra_headers["x-ratelimit-reset-requests"])
    assert 0 < seconds_of(first.headers["x-ratelimit-reset-requests"]) <= reset + 0.5


def seconds_of(duration: str) -> float:
    """``20ms``, ``1.5s`` or ``1h6m0s`` in seconds."""
    match = re.fullmatch(r"(?:(\d+)h)?(?:(\d+)m(?!s))?(?:([\d.]+)s)?(?:(\d+)ms)?", duration)
    assert match and duration, duration
    hours, minutes, seconds, millis = (float(part or 0) for part in match.groups())
    return hours * 3600 + minutes * 60 + seconds + millis / 1000
