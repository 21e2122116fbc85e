"""GET /metrics: what is counted, and that gunicorn's workers are summed."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import requests
from prometheus_client.parser import text_string_to_metric_families

from .conftest import IMAGES_URL, auth, named
from .integration import ENV, LOAD_KEY, gateway_config
from .serving import Gunicorn, generate


def samples(text: str) -> dict[tuple[str, frozenset], float]:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(text: str, name: str, **labels) -> float:
    return samples(text).get((name, frozenset(labels.items())), 0.0)


def test_requests_tokens_images_cost_blocks_and_limits(make_app, config, upstream):
    prices = {"per_million_tokens": {"input_text": 5, "output_image": 40}}
    named(config, "models", "image-prod")["pricing"] = prices
    named(config, "api_keys", "limited")["rate_limit"] = {"rpm": 1}
    client = make_app(config).test_client()
    before = client.get("/metrics").get_data(as_text=True)
    usage = {"input_tokens": 10, "output_tokens": 500, "total_tokens": 510,
             "input_tokens_details": {"text_tokens": 10, "image_tokens": 0}}  # fmt: skip
    upstream.post(
        IMAGES_URL, json={"created": 1, "data": [{"b64_json": "x"}, {"b64_json": "y"}], "usage": usage}
    )
    upstream.post(IMAGES_URL, json={"created": 1, "data": [{"url": "u"}]})
    client.post("/v1/images/generations", headers=auth(), json={"model": "image-prod", "prompt": "p", "n": 2})
    client.post("/v1/images/generations", headers=auth(), json={"model": "openai/dall-e-2", "prompt": "p"})
    client.post(
        "/v1/images/generations", headers=auth(), json={"model": "image-prod", "prompt": "forbidden phrase"}
    )
    client.post("/v1/images/generations", headers=auth(), json={"model": "nope", "prompt": "p"})
    limited = auth("limited-SECRET-0d77aa")
    client.post(
        "/v1/images/generations", headers=limited, json={"model": "dalle", "prompt": "forbidden phrase"}
    )
    upstream.post(IMAGES_URL, json={"created": 1, "data": [{"url": "u"}]})
    client.post("/v1/images/generations", headers=limited, json={"model": "dalle", "prompt": "p"})
    client.post("/v1/images/generations", headers=limited, json={"model": "dalle", "prompt": "p"})
    r = client.get("/metrics")
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/plain")
    after = r.get_data(as_text=True)

    def delta(name, **labels):
        return value(after, name, **labels) - value(before, name, **labels)

    route = "/v1/images/generations"
    assert delta("aisix_requests_total", route=route, model="image-prod", status="200") == 1
    assert (
        delta("aisix_requests_total", route=route, model="openai/*", status="200") == 1
    )  # the row, not the alias
    assert delta("aisix_requests_total", route=route, model="image-prod", status="422") == 1
    assert delta("aisix_requests_total", route=route, model="", status="404") == 1
    assert delta("aisix_requests_total", route=route, model="dalle", status="429") == 1
    assert delta("aisix_tokens_total", model="image-prod", kind="output") == 500
    assert delta("aisix_images_total", model="image-prod") == 2
    assert delta("aisix_cost_usd_total", model="image-prod") == (10 * 5 + 500 * 40) / 1e6
    assert delta("aisix_guardrail_blocks_total", guardrail="no-secrets") == 2
    assert delta("aisix_rate_limit_rejections_total", scope="key", limit="rpm") == 1
    assert delta("aisix_upstream_latency_seconds_count", route=route, model="image-prod") == 1
    assert "SECRET" not in after and "forbidden" not in after


def test_workers_are_summed_and_outlive_restarts(tmp_path, fake):
    """Counts from every worker process are added up, including workers that have since exited."""
    import os
    import re
    import signal
    import time

    server = Gunicorn(gateway_config(tmp_path, fake), workers=2, threads=8, env=ENV)

    def batch(count: int) -> None:
        def one(i: int) -> int:
            return generate(server.url, LOAD_KEY, prompt=f"m {i}").status_code

        with ThreadPoolExecutor(max_workers=16) as pool:
            assert set(pool.map(one, range(count))) == {200}

    try:
        batch(30)
        first = set(re.findall(r"Booting worker with pid: (\d+)", server.log.read_text()))
        for pid in first:
            os.kill(int(pid), signal.SIGTERM)  # gunicorn replaces them with new processes
        deadline = time.monotonic() + 30
        while len(set(re.findall(r"Booting worker with pid: (\d+)", server.log.read_text())) - first) < 2:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        time.sleep(1)
        batch(30)
        text = requests.get(f"{server.url}/metrics", timeout=10).text
        route = "/v1/images/generations"
        assert value(text, "aisix_requests_total", route=route, model="image-prod", status="200") == 60
        assert value(text, "aisix_images_total", model="image-prod") == 60
        assert value(text, "aisix_tokens_total", model="image-prod", kind="output") == 60 * 272
        pids = {p.stem.split("_")[-1] for p in (tmp_path / f"prometheus-{server.port}").glob("counter_*.db")}
        assert len(pids) >= 2
    finally:
        server.stop()
