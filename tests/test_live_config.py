"""Editing config.yaml under load, in the real gunicorn: zero failed requests, every worker follows."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections import Counter

import requests

from .conftest import sha
from .integration import DEV_KEY, ENV, gateway_config
from .serving import Gunicorn, generate

LATE_KEY = "integration-late-SECRET-81fa"


class Traffic(threading.Thread):
    """Four callers sending requests with the dev key until stopped (at most 60 s)."""

    def __init__(self, url: str):
        super().__init__(daemon=True)
        self.url, self.statuses, self.stopping = url, Counter(), threading.Event()

    def run(self) -> None:
        workers = [threading.Thread(target=self._loop) for _ in range(4)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()

    def _loop(self) -> None:
        deadline = time.monotonic() + 60
        while not self.stopping.is_set() and time.monotonic() < deadline:
            try:
                self.statuses[generate(self.url, DEV_KEY, "dalle", "traffic").status_code] += 1
            except requests.RequestException as e:
                self.statuses[type(e).__name__] += 1

    def stop(self) -> Counter:
        self.stopping.set()
        self.join()
        return self.statuses


def late_key_statuses(url: str, count: int = 40) -> Counter:
    return Counter(generate(url, LATE_KEY, "dalle", "late").status_code for _ in range(count))


def add_late_key(path) -> None:
    text = path.read_text().replace(
        "api_keys:\n", f"api_keys:\n  - {{display_name: late, key_hash: {sha(LATE_KEY)}}}\n"
    )
    path.with_suffix(".tmp").write_text(text)
    os.replace(path.with_suffix(".tmp"), path)


def test_edits_apply_in_every_worker_within_two_seconds(tmp_path, fake):
    config = gateway_config(tmp_path, fake)
    server = Gunicorn(config, workers=4, threads=8, env=ENV)
    traffic = Traffic(server.url)
    traffic.start()
    try:
        assert late_key_statuses(server.url, 4) == {401: 4}
        add_late_key(config)
        time.sleep(1.2)
        assert late_key_statuses(server.url) == {200: 40}  # spread over all four workers

        good = config.read_text()
        config.write_text(good.replace("provider_key: openai-main}", "provider_key: missing}", 1))
        time.sleep(1.2)
        assert late_key_statuses(server.url) == {200: 40}  # the broken edit changed nothing

        config.write_text(good)
        server.process.send_signal(signal.SIGHUP)  # gunicorn's own reload: new workers, same config
        time.sleep(3.0)
        assert late_key_statuses(server.url) == {200: 40}
    finally:
        statuses = traffic.stop()
        server.stop()
    assert set(statuses) == {200} and statuses[200] > 50, statuses
    log = server.log.read_text()
    assert "models[0].provider_key: unknown provider key 'missing'" in log
    assert "the change is rejected; the last good config keeps serving" in log
    assert "Handling signal: hup" in log.lower() or "hang up" in log.lower()


def test_every_worker_follows_edits_with_no_traffic_between_them(tmp_path, fake):
    """4 workers, not one request between a good edit and a broken one: every worker has the
    good one (the last good config is the same config everywhere). Then an editor's in-place
    save, caught empty and caught cut short, changes nothing either."""
    config = gateway_config(tmp_path, fake)
    server = Gunicorn(config, workers=4, threads=4, env=ENV)
    time.sleep(1.5)  # ready means one worker is: give the other three time to boot
    try:
        add_late_key(config)
        time.sleep(1.2)
        good = config.read_text()
        config.write_text(good.replace("provider_key: openai-main}", "provider_key: missing}", 1))
        time.sleep(1.2)
        log = server.log.read_text()
        assert log.count(f"config {config} reloaded") == 4, log  # each worker, on its own
        assert late_key_statuses(server.url) == {200: 40}

        config.write_text("")  # truncated: what a worker may see in the middle of a save
        time.sleep(1.0)
        config.write_text(good[: good.index("api_keys:")])  # written up to just before the keys
        time.sleep(1.0)
        assert late_key_statuses(server.url) == {200: 40}
    finally:
        server.stop()
    log = server.log.read_text()
    assert log.count("the config file is empty") == 4
    assert log.count("the change removes every one of api_keys") == 4
