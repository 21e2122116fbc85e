"""How spend is written: a batch at a time when no budget waits for it, flushed whole at exit and
for the admin API, and started afresh in a forked worker."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import pytest

from aisix_flask.policy.budgets import Budgets, counter, period

from .budgeting import chat, image, images_answer, ledger_cost, spent
from .conftest import CHAT_URL


def test_requests_under_no_budget_are_counted_a_few_at_a_time(budgeted, upstream, monkeypatch):
    """Without a budget, a request's spend waits up to defer_s to be written with the others' (one
    store write for many requests); under a budget it is written when the request ends."""
    app, client = budgeted(chat={"usd": 1, "period": "day"})
    budgets = app.extensions["aisix"].budgets
    writes = []
    add = budgets.store.add
    monkeypatch.setattr(budgets.store, "add", lambda charges: (writes.append(charges), add(charges)))
    for _ in range(5):
        images_answer(upstream, 1)
        assert image(client).status_code == 200  # dalle, key 'dev': no budget
    assert writes == []
    time.sleep(Budgets.defer_s * 4)
    assert len(writes) == 1 and spent(app, "model", "chat-prod") == 0
    assert {c.key: c.amount for c in writes[0]}[
        f"key:dev:{period('day', datetime.now(UTC))[0]}"
    ] == 5 * 40_000_000
    upstream.post(CHAT_URL, json={"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 5}})
    assert chat(client).status_code == 200  # chat-prod has a budget: written at once
    assert len(writes) == 2 and spent(app, "model", "chat-prod") == pytest.approx(0.013)
    assert ledger_cost(app) == pytest.approx(0.2 + 0.013)


def test_a_flush_waits_for_a_write_already_under_way(budgeted, upstream, monkeypatch):
    """At exit (or for the admin API) a flush returns once what was counted is in the store, also
    when the timer's write of it is still running."""
    app, client = budgeted()
    budgets = app.extensions["aisix"].budgets
    add = budgets.store.add

    def slow(charges):
        time.sleep(0.3)
        add(charges)

    monkeypatch.setattr(budgets.store, "add", slow)
    images_answer(upstream, 1)
    assert image(client).status_code == 200
    time.sleep(Budgets.defer_s * 3)  # the timer has taken the counts and is writing them
    budgets.flush()
    day = counter("key", "dev", period("day", datetime.now(UTC))[0])
    assert budgets.store.spent([day]) == {day: 40_000_000}


@pytest.mark.parametrize("greenlets", [False, True])
def test_a_forked_child_starts_with_nothing_deferred_and_no_lock_held(tmp_path, greenlets):
    """gunicorn's preload_app forks workers from a process that may have counted: the child writes
    none of the parent's counts, a lock one of the parent's threads held does not hang it, and in
    a gevent worker (which patches threading after the fork) two greenlets counting at once do
    not block the worker."""
    import os
    import signal

    from aisix_flask.policy.limits import Limiter
    from aisix_flask.stores.spend import Charge, spend_store_for

    limiter = Limiter(f"sqlite:///{tmp_path}/rl.db")
    budgets = Budgets(spend_store_for(limiter.storage), limiter.health)
    budgets.defer_s = 60  # counts stay deferred
    budgets._defer([Charge("key:parent:total", None, 5, None)])
    counting, _ = budgets._locks
    counting.acquire()  # as if another thread of the parent were counting at the fork
    pid = os.fork()
    if pid == 0:  # the child: exit code 0 only if all of it holds
        signal.signal(signal.SIGALRM, signal.SIG_DFL)
        signal.alarm(10)  # a child that hangs is killed: the test fails instead of hanging
        try:
            child = [Charge("key:child:total", None, 1, None)]
            if greenlets:
                import warnings

                import gevent
                from gevent import monkey

                with warnings.catch_warnings():  # "patching after ssl was imported": as late as gunicorn
                    warnings.simplefilter("ignore")
                    monkey.patch_all()
                done = gevent.joinall([gevent.spawn(budgets._defer, child) for _ in range(2)], timeout=3)
                counted = len(done) == 2
            else:
                budgets._defer(child)
                budgets._defer(child)
                counted = True
            os._exit(0 if counted and budgets._deferred == {"key:child:total": [2, None]} else 1)
        except BaseException:
            os._exit(2)
    counting.release()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    budgets.flush()  # the parent still writes its own
    assert budgets.store.spent(["key:parent:total"]) == {"key:parent:total": 5}
