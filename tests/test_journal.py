"""The usage journal in one process: rows the database does not take are kept on local disk and
replayed into it, each once, by one process at a time; an unreadable journal never stops a start."""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import text

from aisix_flask.usage.journal import Journal
from aisix_flask.usage.ledger import Ledger
from aisix_flask.usage.row import UsageRow
from aisix_flask.usage.table import ledger_name, storable


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/usage.db"
    url = request.getfixturevalue("pg_schema")
    ledger = Ledger(url, str(tmp_path / "setup-journal.db"))
    with ledger.engine.begin() as conn:
        conn.execute(text("DELETE FROM usage"))
    ledger.close()
    return url


@pytest.fixture
def journal_path(tmp_path):
    return str(tmp_path / "journal.db")


@pytest.fixture
def ledger(url, journal_path):
    ledger = Ledger(url, journal_path)
    yield ledger
    ledger.close()


def row(i: int, **fields) -> UsageRow:
    return UsageRow(f"req-{i}", "dev", "/v1/chat/completions", "127.0.0.1", status=200, **fields)


def request_ids(ledger: Ledger) -> list[str]:
    with ledger.engine.connect() as conn:
        return sorted(conn.execute(text("SELECT request_id FROM usage")).scalars())


def replay_all(ledger: Ledger) -> None:
    """Replay until the journal is empty: this test's call, or the ledger's own writer (which
    looks at the journal too, and holds the replay lock meanwhile)."""
    wait_until(lambda: ledger.replay_journal(budget_s=30).emptied and ledger.journal.count() == 0)


def wait_until(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_replay_writes_oldest_first_and_empties_the_journal(ledger):
    rows = [storable(row(i)) for i in range(1200)]  # three chunks
    ledger.journal.append(rows[:700])
    ledger.journal.append(rows[700:])
    assert ledger.journal.count() == 1200
    order = []
    insert = ledger.database.insert

    def noting(rows, **kwargs):
        order.extend(r["request_id"] for r in rows)
        return insert(rows, **kwargs)

    ledger.database.insert = noting
    done = ledger.replay_journal(budget_s=30)
    assert (done.rows, done.emptied, done.reached) == (1200, True, True)
    assert order == [f"req-{i}" for i in range(1200)]
    assert ledger.journal.count() == 0 and len(request_ids(ledger)) == 1200


def test_a_row_already_in_the_database_is_not_written_twice(ledger):
    """A writer that died between the database's commit and the journal's delete leaves rows in
    both; the same row journaled twice is written once too."""
    written = [row(1), row(2)]
    for r in written:
        ledger.record(r)
    assert ledger.flush(10)
    again, third = [storable(r) for r in written], storable(row(3))
    ledger.journal.append([*again, third])
    ledger.journal.append([third])
    replay_all(ledger)
    assert request_ids(ledger) == ["req-1", "req-2", "req-3"]


def test_the_same_request_id_at_another_time_is_another_row(ledger):
    """A caller may send one x-request-id twice: two calls, two rows, both kept."""
    from datetime import timedelta

    first = row(1)
    second = row(1, created_at=first.created_at + timedelta(seconds=1))
    ledger.record(first)
    assert ledger.flush(10)
    ledger.journal.append([storable(second)])
    replay_all(ledger)
    assert request_ids(ledger) == ["req-1", "req-1"]


def test_two_processes_never_replay_the_same_rows(url, journal_path):
    """Two ledgers on one journal (two workers of a host): while one replays, the other does not;
    every row is handed to the database once."""
    first, second = Ledger(url, journal_path), Ledger(url, journal_path)
    first.journal.append([storable(row(i)) for i in range(1000)])
    handed: list[str] = []
    started = threading.Event()

    def slow(database):
        insert = database.insert

        def write(rows, **kwargs):
            started.set()
            handed.extend(r["request_id"] for r in rows)
            time.sleep(0.2)
            return insert(rows, **kwargs)

        return write

    first.database.insert = slow(first.database)
    second.database.insert = slow(second.database)
    results = []
    threads = [
        threading.Thread(target=lambda lg=lg: results.append(lg.replay_journal(30))) for lg in (first, second)
    ]
    threads[0].start()
    started.wait(5)
    threads[1].start()
    for t in threads:
        t.join()
    assert sorted(r.rows for r in results) == [0, 1000]
    assert len(handed) == 1000 == len(set(handed))
    assert len(request_ids(first)) == 1000
    first.close()
    second.close()


def test_rows_of_another_gateways_database_are_left_to_it(ledger, tmp_path, journal_path):
    other = Journal(journal_path, ledger_name(f"sqlite:///{tmp_path}/other.db"))
    other.append([storable(row(9))])
    ledger.journal.append([storable(row(1))])
    assert ledger.journal.count() == 1 and other.count() == 1
    assert ledger.journal.others() == {ledger_name(f"sqlite:///{tmp_path}/other.db"): 1}
    ledger.replay_journal(budget_s=30)
    assert request_ids(ledger) == ["req-1"] and other.count() == 1
    other.close()


def test_a_row_from_an_older_version_is_replayed_with_what_it_has(ledger):
    """A version that recorded fewer columns (and one this version does not know) journaled it."""
    values = storable(row(1, model="m", total_tokens=7))
    for newer in ("search_units", "input_cached_tokens", "idempotent_replay", "pii_masked"):
        del values[newer]
    values["retired_column"] = 1
    ledger.journal.append([values])
    done = ledger.replay_journal(budget_s=30)
    assert done.emptied
    [got] = ledger.query()
    assert (got["model"], got["total_tokens"], got["pii_masked"], got["idempotent_replay"]) == (
        "m",
        7,
        0,
        False,
    )


def test_a_row_that_cannot_be_read_is_logged_and_the_others_replayed(ledger, journal_path, caplog):
    ledger.journal.append([storable(row(1))])
    with sqlite3.connect(journal_path) as conn:
        for text in ("{not json", json.dumps({"request_id": "no-time"})):
            conn.execute(
                "INSERT INTO journal (ledger, journaled_at, replay_after, row) VALUES (?, 'x', 0, ?)",
                (ledger.journal.ledger, text),
            )
        conn.execute("UPDATE waiting SET rows = rows + 2")
    ledger.journal.close()
    ledger.journal.append([storable(row(2))])
    with caplog.at_level(logging.ERROR):
        assert ledger.replay_journal(budget_s=30).emptied
    assert request_ids(ledger) == ["req-1", "req-2"]
    assert caplog.text.count("cannot be read and is left out") == 2


@pytest.mark.parametrize(
    "spoil",
    [
        lambda path: Path(path).write_bytes(b"this is not a database" * 100),
        lambda path: sqlite3.connect(path).execute("PRAGMA user_version = 99").connection.commit(),
        lambda path: sqlite3.connect(path).executescript("CREATE TABLE journal (x); PRAGMA user_version = 1"),
    ],
    ids=["corrupt", "unknown format", "another table"],
)
def test_an_unreadable_journal_is_set_aside_and_a_new_one_started(tmp_path, journal_path, caplog, spoil):
    spoil(journal_path)
    ledger = Ledger(f"sqlite:///{tmp_path}/usage.db", journal_path)
    with caplog.at_level(logging.ERROR):
        ledger.start()
    assert "cannot be read" in caplog.text and "moved to" in caplog.text
    [aside] = [
        p for p in tmp_path.iterdir() if ".unreadable-" in p.name and not p.name.endswith(("-wal", "-shm"))
    ]
    assert aside.exists()
    ledger.journal.append([storable(row(1))])  # the new journal works
    assert ledger.journal.count() == 1
    ledger.close()


def test_a_journal_pointed_at_another_database_is_never_moved_or_written(tmp_path, caplog):
    """gateway.usage.journal set to the ledger's own file, say: the gateway serves, the rows go
    to the database, and the file is left as it was."""
    usage_db = tmp_path / "usage.db"
    ledger = Ledger(f"sqlite:///{usage_db}", str(usage_db))
    with caplog.at_level(logging.ERROR):
        ledger.start()
    assert "it is not a journal: it holds the tables ['usage']" in caplog.text
    ledger.record(row(1))
    assert ledger.flush(10) and request_ids(ledger) == ["req-1"]
    ledger.close()
    assert not list(tmp_path.glob("*.unreadable-*"))
    with sqlite3.connect(usage_db) as conn:
        assert [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")] == [
            "usage"
        ]


def hang_writes(ledger: Ledger) -> threading.Event:
    """Make the ledger's writes wait until the event returned is set; record row 0 and return
    once its write hangs."""
    release, stuck = threading.Event(), threading.Event()
    insert = ledger.database.insert

    def hanging(rows, **kwargs):
        stuck.set()
        release.wait(10)
        return insert(rows, **kwargs)

    ledger.database.insert = hanging
    ledger.record(row(0))
    assert stuck.wait(5)
    return release


def test_a_full_queue_sends_rows_to_the_journal_not_to_memory(tmp_path, journal_path):
    """The writer is stuck in a write that does not return: past ``queue_rows`` rows, each new
    row goes to the journal; once the write returns, every row is in the database once."""
    ledger = Ledger(f"sqlite:///{tmp_path}/usage.db", journal_path, queue_rows=5)
    release = hang_writes(ledger)
    for i in range(1, 21):
        ledger.record(row(i))
    assert ledger._backlog.queued() == 5
    assert ledger.journal.count() == 15
    release.set()
    assert ledger.flush(10)
    wait_until(lambda: ledger.journal.count() == 0)
    assert request_ids(ledger) == sorted(f"req-{i}" for i in range(21))
    ledger.close()


def test_what_the_drain_time_leaves_goes_to_the_journal_and_is_written_once(tmp_path, journal_path, caplog):
    """The database hangs at exit: the queued rows and the batch being written are journaled and
    the log says how many and where. The hung write then lands after all: the next start's replay
    does not write those rows twice."""
    url = f"sqlite:///{tmp_path}/usage.db"
    ledger = Ledger(url, journal_path)
    ledger.linger_s, ledger.in_doubt_s = 0, 0.5
    release = hang_writes(ledger)
    for i in range(1, 4):
        ledger.record(row(i))
    with caplog.at_level(logging.WARNING):
        ledger.close(timeout=0.2)
    assert (
        "did not take 4 rows within 0.2 s of the stop; they are in the journal " + journal_path in caplog.text
    )
    assert f"4 rows wait in the journal {journal_path} (4 put there by this worker)" in caplog.text
    release.set()  # the hung write of req-0 lands
    reader = Ledger(url, str(tmp_path / "unused.db"))
    wait_until(lambda: request_ids(reader) == ["req-0"])
    reader.close()
    after = Ledger(url, journal_path)
    after.start()
    wait_until(lambda: after.journal.count() == 0)
    assert request_ids(after) == ["req-0", "req-1", "req-2", "req-3"]
    after.close()


def test_the_metric_and_readyz_count_the_journal(make_app, config, tmp_path):
    from aisix_flask import metrics

    app = make_app(config)
    ledger = app.extensions["aisix"].ledger
    ledger.journal.append([storable(row(i)) for i in range(3)])
    assert app.test_client().get("/readyz").get_json()["stores"]["ledger"]["journal_rows"] == 3
    ledger.record(row(9))  # the writer starts, replays, and counts
    wait_until(lambda: ledger.journal.count() == 0)
    wait_until(lambda: metrics.LEDGER_JOURNAL_ROWS._value.get() == 0)
    assert app.test_client().get("/readyz").get_json()["stores"]["ledger"]["journal_rows"] == 0
    assert len(ledger.query()) == 4


def test_a_start_replays_what_an_earlier_run_left(make_app, config, tmp_path, caplog):
    earlier = Journal(
        config["gateway"]["usage"]["journal"], ledger_name(config["gateway"]["usage"]["database_url"])
    )
    earlier.append([storable(row(i)) for i in range(3)])
    earlier.close()
    with caplog.at_level(logging.WARNING):
        app = make_app(config)
    assert "3 rows from an earlier run wait in the journal" in caplog.text
    ledger = app.extensions["aisix"].ledger
    wait_until(lambda: ledger.journal.count() == 0)
    assert request_ids(ledger) == ["req-0", "req-1", "req-2"]


def test_ledger_status_and_replay_commands(make_app, config):
    app = make_app(config)  # no writer runs: nothing was recorded, and the journal was empty
    journal = app.extensions["aisix"].ledger.journal
    journal.append([storable(row(i)) for i in range(2)])
    runner = app.test_cli_runner()
    status = runner.invoke(args=["aisix", "ledger", "status"])
    assert status.exit_code == 0, status.output
    assert "(answers)" in status.output and "waiting:  2 rows" in status.output
    assert config["gateway"]["usage"]["journal"] in status.output
    replay = runner.invoke(args=["aisix", "ledger", "replay"])
    assert replay.exit_code == 0, replay.output
    assert "replayed 2 rows; 0 wait" in replay.output
    assert "waiting:  0 rows" in runner.invoke(args=["aisix", "ledger", "status"]).output
    assert len(app.extensions["aisix"].ledger.query()) == 2


def test_ledger_replay_fails_while_the_database_is_away(make_app, config):
    config["gateway"]["usage"]["database_url"] = "postgresql://127.0.0.1:1/test?connect_timeout=1"
    app = make_app(config)
    app.extensions["aisix"].ledger.journal.append([storable(row(1))])
    runner = app.test_cli_runner()
    assert "(does not answer)" in runner.invoke(args=["aisix", "ledger", "status"]).output
    replay = runner.invoke(args=["aisix", "ledger", "replay"])
    assert replay.exit_code == 1
    assert "replayed 0 rows; 1 wait" in replay.output and "the database does not answer" in replay.output


def test_a_database_that_hangs_holds_at_most_a_second_of_rows_in_memory(pg_schema, tmp_path, journal_path):
    """The connection stops answering without being reset: once the batch in flight is older
    than ``stuck_s``, new rows go to the journal at once (a killed worker cannot lose them); the
    hung write lands when the database answers again, and each row is there once."""
    from .tcp_relay import TcpRelay

    relay = TcpRelay(("127.0.0.1", 5432)).start()
    url = pg_schema.replace("127.0.0.1:5432", f"127.0.0.1:{relay.port}")
    ledger = Ledger(url, journal_path)
    ledger.linger_s = 0
    with ledger.engine.begin() as conn:
        conn.execute(text("DELETE FROM usage"))
    try:
        relay.freeze()
        ledger.record(row(0))
        wait_until(lambda: ledger._in_flight_since is not None)
        time.sleep(ledger.stuck_s + 0.2)
        for i in range(1, 6):
            ledger.record(row(i))
        assert ledger.journal.count() == 5 and ledger._backlog.queued() == 0
        relay.thaw()
        assert ledger.flush(30)
        wait_until(lambda: ledger.journal.count() == 0, timeout=30)
        assert request_ids(ledger) == [f"req-{i}" for i in range(6)]
    finally:
        relay.thaw()
        ledger.close()
        relay.cut()


def test_a_read_only_database_sends_rows_to_the_journal_not_away(pg_schema, journal_path):
    """After a failover to a standby the database answers reads and refuses writes: the rows wait
    in the journal; none is dropped as if its values were at fault."""
    from aisix_flask import metrics as gateway_metrics

    Ledger(pg_schema, journal_path).close()  # the table is there
    read_only = pg_schema.replace("options=", "options=-cdefault_transaction_read_only%3Don%20")
    ledger = Ledger(read_only, journal_path)
    assert ledger.database._schema_ready  # it answers reads
    dropped = gateway_metrics.LEDGER_ROWS_DROPPED._value.get()
    for i in range(3):
        ledger.record(row(i))
    assert ledger.flush(10)
    assert ledger.journal.count() == 3
    assert gateway_metrics.LEDGER_ROWS_DROPPED._value.get() == dropped
    assert ledger.ping() is False  # /readyz: the writes fail, whatever a read says
    ledger.close()
