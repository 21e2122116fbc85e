"""The usage journal on the real gunicorn, as an operator lives it: the ledger's database goes
away under traffic, the gateway is stopped during the outage and started once it is back; a
worker is killed outright; the journal file is broken. Every answered call ends with exactly one
row (a killed worker: all but the last second's)."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
from sqlalchemy import create_engine, text

from .integration import ADMIN_KEY, ENV, LOAD_KEY, gateway_config
from .serving import Gunicorn
from .tcp_relay import TcpRelay


def call(server: Gunicorn, tag: str) -> str:
    """One image generation under a request id of our own; the id, once it was answered 200."""
    request_id = f"{tag}-{uuid.uuid4().hex[:12]}"
    r = requests.post(
        f"{server.url}/v1/images/generations",
        json={"model": "image-prod", "prompt": "p"},
        headers={"x-api-key": LOAD_KEY, "x-request-id": request_id},
        timeout=30,
    )
    assert r.status_code == 200, r.text
    return request_id


def calls(server: Gunicorn, tag: str, n: int) -> list[str]:
    with ThreadPoolExecutor(max_workers=8) as pool:
        return list(pool.map(lambda _: call(server, tag), range(n)))


def rows_by_request(url: str, request_ids: list[str]) -> dict[str, int]:
    """How many ledger rows each of ``request_ids`` has, read straight from the database."""
    engine = create_engine(url.replace("postgresql://", "postgresql+psycopg://"))
    with engine.connect() as conn:
        found = conn.execute(text("SELECT request_id FROM usage")).scalars().all()
    engine.dispose()
    wanted = set(request_ids)
    counts = dict.fromkeys(request_ids, 0)
    for request_id in found:
        if request_id in wanted:
            counts[request_id] += 1
    return counts


def journal_rows(path: Path) -> int:
    if not path.exists():
        return 0
    with sqlite3.connect(path) as conn:
        try:
            return conn.execute("SELECT count(*) FROM journal").fetchone()[0]
        except sqlite3.OperationalError:  # a worker is creating the file (its tables come next)
            return 0


def wait_until(condition, timeout: float = 20.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def readyz(server: Gunicorn) -> requests.Response:
    return requests.get(f"{server.url}/readyz", timeout=10)


def journal_metric(server: Gunicorn) -> float:
    for line in requests.get(f"{server.url}/metrics", timeout=10).text.splitlines():
        if line.startswith("aisix_ledger_journal_rows "):
            return float(line.split()[1])
    return -1.0


def test_a_postgresql_outage_a_stop_during_it_and_a_start_after_lose_no_row(tmp_path, fake, pg_schema):
    direct = pg_schema
    engine = create_engine(direct.replace("postgresql://", "postgresql+psycopg://"))
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE IF EXISTS usage"))
    engine.dispose()
    relay = TcpRelay(("127.0.0.1", 5432)).start()
    through_relay = direct.replace("127.0.0.1:5432", f"127.0.0.1:{relay.port}")
    config = gateway_config(tmp_path, fake, usage_url=through_relay)
    journal = tmp_path / "usage-journal.db"
    server = Gunicorn(config, workers=2, env=ENV)
    try:
        answered = calls(server, "before", 20)
        relay.cut()
        started = time.monotonic()
        answered += calls(server, "outage", 120)
        assert time.monotonic() - started < 20  # answered at the upstream's pace, not the database's
        wait_until(lambda: journal_rows(journal) > 0, what="rows in the journal")
        r = readyz(server)
        assert r.status_code == 503 and "usage rows wait in the local journal" in r.json()["error"]["message"]
        wait_until(lambda: journal_metric(server) > 0, what="the gauge")
    finally:
        assert server.stop() == 0
    log = server.log.read_text()
    assert "rows wait in the journal " + str(journal) in log
    assert "lost" not in log
    in_database = rows_by_request(direct, answered)
    assert set(in_database.values()) <= {0, 1}
    assert journal_rows(journal) >= sum(1 for n in in_database.values() if n == 0) > 0

    relay.restore()
    server = Gunicorn(config, workers=2, env=ENV)
    try:
        wait_until(lambda: readyz(server).json()["stores"]["ledger"]["journal_rows"] == 0, what="the replay")
        answered += calls(server, "after", 10)
        server_log = server.log
    finally:
        assert server.stop() == 0
        relay.cut()
    assert "from an earlier run wait in the journal" in server_log.read_text()
    counts = rows_by_request(direct, answered)
    assert [rid for rid, n in counts.items() if n != 1] == []
    assert journal_rows(journal) == 0


@pytest.fixture
def unwritable():
    """Makes a file unwritable even for root (chattr +i), or by its mode for anyone else."""
    spoiled: list[Path] = []

    def spoil(path: Path) -> None:
        if os.geteuid() == 0:
            subprocess.run(["chattr", "+i", str(path)], check=True)
        else:
            path.chmod(0o444)
        spoiled.append(path)

    yield spoil
    for path in spoiled:
        if os.geteuid() == 0:
            subprocess.run(["chattr", "-i", str(path)], check=False)
        path.chmod(0o644)


def test_a_sqlite_ledger_made_unwritable_loses_no_row(tmp_path, fake, unwritable):
    usage_db = tmp_path / "usage.db"
    config = gateway_config(tmp_path, fake)
    journal = tmp_path / "usage-journal.db"
    server = Gunicorn(config, workers=2, env=ENV)
    try:
        answered = calls(server, "before", 10)
    finally:
        assert server.stop() == 0
    for leftover in ("-wal", "-shm"):
        assert not Path(f"{usage_db}{leftover}").exists() or leftover == "-shm"
    unwritable(usage_db)
    server = Gunicorn(config, workers=2, env=ENV, ready="/livez")
    try:
        answered += calls(server, "unwritable", 60)
        wait_until(lambda: journal_rows(journal) == 60, what="60 rows in the journal")
    finally:
        assert server.stop() == 0
    assert "60 rows" in server.log.read_text() or "rows wait in the journal" in server.log.read_text()
    if os.geteuid() == 0:
        subprocess.run(["chattr", "-i", str(usage_db)], check=True)
    usage_db.chmod(0o644)

    server = Gunicorn(config, workers=2, env=ENV)
    try:
        wait_until(lambda: readyz(server).json()["stores"]["ledger"]["journal_rows"] == 0, what="the replay")
    finally:
        assert server.stop() == 0
    counts = rows_by_request(f"sqlite:///{usage_db}", answered)
    assert [rid for rid, n in counts.items() if n != 1] == []


def _workers(master: int) -> list[int]:
    children = Path(f"/proc/{master}/task/{master}/children").read_text().split()
    return [int(pid) for pid in children]


def test_a_worker_killed_under_load_loses_at_most_its_last_second(tmp_path, fake):
    """README: a worker killed outright (SIGKILL, out of memory) loses at most the rows of its
    last second; every other answered call has its row."""
    server = Gunicorn(gateway_config(tmp_path, fake), workers=2, env=ENV)
    answered: dict[str, float] = {}
    stop = threading.Event()
    lock = threading.Lock()

    def load() -> None:
        while not stop.is_set():
            request_id = f"load-{uuid.uuid4().hex[:12]}"
            try:
                r = requests.post(
                    f"{server.url}/v1/images/generations",
                    json={"model": "image-prod", "prompt": "p"},
                    headers={"x-api-key": LOAD_KEY, "x-request-id": request_id},
                    timeout=10,
                )
            except requests.RequestException:
                continue  # on the killed worker's connection: never answered
            if r.status_code == 200:
                with lock:
                    answered[request_id] = time.monotonic()

    try:
        threads = [threading.Thread(target=load) for _ in range(8)]
        for t in threads:
            t.start()
        # Killed once more than 50 answered calls are over a second old (a busy machine answers
        # fewer a second): their rows must all be there.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with lock:
                settled = sum(1 for at in answered.values() if at < time.monotonic() - 1.0)
            if settled > 50:
                break
            time.sleep(0.1)
        victim = _workers(server.process.pid)[0]
        os.kill(victim, signal.SIGKILL)
        killed_at = time.monotonic()
        time.sleep(2.0)
        stop.set()
        for t in threads:
            t.join()
    finally:
        assert server.stop() == 0
    counts = rows_by_request(f"sqlite:///{tmp_path}/usage.db", list(answered))
    assert set(counts.values()) <= {0, 1}
    lost = [answered[rid] for rid, n in counts.items() if n == 0]
    before_kill = sum(1 for at in answered.values() if at < killed_at - 1.0)
    assert before_kill > 50 and len(answered) > 100
    assert all(killed_at - 1.0 <= at <= killed_at + 0.5 for at in lost), (
        len(lost),
        killed_at,
        sorted(lost)[:5],
    )


def test_a_broken_journal_file_is_set_aside_and_the_gateway_serves(tmp_path, fake):
    journal = tmp_path / "usage-journal.db"
    journal.write_bytes(b"\x00garbage, not SQLite\x00" * 200)
    server = Gunicorn(gateway_config(tmp_path, fake), workers=2, env=ENV)
    try:
        call(server, "works")
        r = requests.get(f"{server.url}/admin/v1/usage", headers={"x-api-key": ADMIN_KEY}, timeout=10)
        assert r.status_code == 200
    finally:
        assert server.stop() == 0
    log = server.log.read_text()
    assert log.count("cannot be read (file is not a database): moved to") == 1
    assert len(list(tmp_path.glob("usage-journal.db.unreadable-*"))) == 1
