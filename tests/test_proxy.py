"""Behind a company proxy: outbound through a real loopback proxy, NO_PROXY, CA bundles, and
X-Forwarded-For only as far as trusted_proxy_hops says."""

from __future__ import annotations

import pytest

from .conftest import CALLER_KEY, UPSTREAM_KEY, auth, named
from .forward_proxy import ForwardProxy
from .serving import free_port

ROUTE = "/v1/images/generations"
OK = {"model": "image-prod", "prompt": "through a proxy"}


@pytest.fixture
def proxy():
    server = ForwardProxy(credentials="corp:s3cret-proxy-pass").start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def via(make_app, config, fake, monkeypatch):
    """An app whose upstream is the fake; ``via(gateway_proxy=…, key_proxy=…)``."""
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy",
                 "REQUESTS_CA_BUNDLE", "ALL_PROXY", "all_proxy"):  # fmt: skip
        monkeypatch.delenv(name, raising=False)

    def build(gateway_proxy=None, key_proxy=None, **upstream):
        named(config, "provider_keys", "openai-main")["api_base"] = fake.url
        if key_proxy:
            named(config, "provider_keys", "openai-main")["proxy"] = key_proxy
        config["gateway"]["upstream"].update(upstream)
        if gateway_proxy:
            config["gateway"]["upstream"]["proxy"] = gateway_proxy
        return make_app(config).test_client()

    return build


def test_configured_proxy_carries_the_call(via, proxy, fake):
    client = via(gateway_proxy=f"http://corp:s3cret-proxy-pass@127.0.0.1:{proxy.port}")
    r = client.post(ROUTE, headers=auth(), json=OK)
    assert r.status_code == 200, r.get_data(as_text=True)
    assert proxy.seen == [f"127.0.0.1:{fake.server_address[1]}"]
    sent = [c for c in fake.calls if c["body"].get("prompt") == OK["prompt"]][-1]
    headers = {k.lower(): v for k, v in sent["headers"].items()}
    assert headers["authorization"] == f"Bearer {UPSTREAM_KEY}"  # the provider key, not .netrc or the proxy's
    assert "proxy-authorization" not in headers


def test_a_provider_keys_proxy_wins(via, proxy):
    client = via(
        gateway_proxy="http://127.0.0.1:1", key_proxy=f"http://corp:s3cret-proxy-pass@127.0.0.1:{proxy.port}"
    )
    assert client.post(ROUTE, headers=auth(), json=OK).status_code == 200
    assert len(proxy.seen) == 1


def test_environment_proxy_and_no_proxy(via, monkeypatch, fake):
    open_proxy = ForwardProxy().start()
    try:
        monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{open_proxy.port}")
        client = via()
        assert client.post(ROUTE, headers=auth(), json=OK).status_code == 200
        assert len(open_proxy.seen) == 1
        monkeypatch.setenv("NO_PROXY", "127.0.0.1")
        assert client.post(ROUTE, headers=auth(), json=OK).status_code == 200
        assert len(open_proxy.seen) == 1  # bypassed
    finally:
        open_proxy.shutdown()
        open_proxy.server_close()


def test_netrc_is_never_read(via, monkeypatch, tmp_path, fake):
    netrc = tmp_path / "netrc"
    netrc.write_text("machine 127.0.0.1 login someone password netrc-SECRET\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    client = via()
    assert client.post(ROUTE, headers=auth(), json=OK).status_code == 200
    sent = [c for c in fake.calls if c["body"].get("prompt") == OK["prompt"]][-1]
    assert {k.lower(): v for k, v in sent["headers"].items()}["authorization"] == f"Bearer {UPSTREAM_KEY}"


def test_an_unreachable_proxy_is_named_without_its_credentials(via):
    port = free_port()
    client = via(gateway_proxy=f"http://corp:s3cret-proxy-pass@127.0.0.1:{port}")
    r = client.post(ROUTE, headers=auth(), json=OK)
    error = r.get_json()["error"]
    assert (r.status_code, error["code"]) == (502, "upstream_unreachable")
    assert f"proxy 127.0.0.1:{port}" in error["message"]
    assert "s3cret" not in r.get_data(as_text=True) and "corp" not in error["message"]
    assert r.headers["x-should-retry"] == "true"  # nothing reached the upstream


def test_wrong_proxy_credentials(via, proxy):
    client = via(gateway_proxy=f"http://corp:wrong@127.0.0.1:{proxy.port}")
    r = client.post(ROUTE, headers=auth(), json=OK)
    assert (r.status_code, r.get_json()["error"]["code"]) == (
        502,
        "upstream_auth_failed",
    )  # not the caller's 407
    assert "wrong" not in r.get_data(as_text=True)


@pytest.mark.parametrize(
    ("configured", "environment", "expected"),
    [
        ({}, None, True),  # certifi
        ({}, "/etc/ssl/certs/ca-certificates.crt", "/etc/ssl/certs/ca-certificates.crt"),
        ({"ca_bundle": "GATEWAY"}, "/etc/ssl/certs/ca-certificates.crt", "GATEWAY"),
    ],
)
def test_ca_bundle(make_app, config, upstream, monkeypatch, tmp_path, configured, environment, expected):
    from .conftest import IMAGES_URL

    bundle = tmp_path / "corp-ca.pem"
    bundle.write_text("-----BEGIN CERTIFICATE-----\n")
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    if environment:
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", environment)
    if configured:
        config["gateway"]["upstream"]["ca_bundle"] = str(bundle)
    upstream.post(IMAGES_URL, json={"created": 1, "data": []})
    make_app(config).test_client().post(ROUTE, headers=auth(), json={"model": "image-prod", "prompt": "p"})
    assert upstream.calls[0].request.req_kwargs["verify"] == (
        str(bundle) if expected == "GATEWAY" else expected
    )


def test_a_missing_ca_bundle_is_a_config_error(tmp_path, config):
    from aisix_flask.config import ConfigError, load_config

    from .conftest import write_config

    named(config, "provider_keys", "openai-main")["ca_bundle"] = str(tmp_path / "nope.pem")
    with pytest.raises(ConfigError, match=r"provider_keys\[0\].ca_bundle: no such file"):
        load_config(str(write_config(tmp_path / "c.yaml", config)))


@pytest.mark.parametrize(
    ("hops", "forwarded", "recorded"),
    [
        (0, "203.0.113.9", "127.0.0.1"),  # nobody trusted: the header is ignored
        (1, "203.0.113.9", "203.0.113.9"),
        (1, "198.51.100.1, 203.0.113.9", "203.0.113.9"),  # a forged first entry does not count
        (2, "198.51.100.1, 203.0.113.9", "198.51.100.1"),
    ],
)
def test_trusted_proxy_hops(make_app, config, hops, forwarded, recorded):
    config["gateway"]["trusted_proxy_hops"] = hops
    app = make_app(config)
    app.test_client().post(ROUTE, headers={**auth(CALLER_KEY), "X-Forwarded-For": forwarded},
                           json={"model": "nope", "prompt": "p"})  # fmt: skip
    ledger = app.extensions["aisix"].ledger
    ledger.flush(10)
    assert ledger.query(limit=1)[0]["client_ip"] == recorded


@pytest.fixture(scope="module")
def tls_upstream(tmp_path_factory):
    """The fake upstream over HTTPS, its certificate signed by a throwaway 'corporate' CA."""
    import shutil
    import ssl
    import subprocess

    from .fake_upstream import FakeOpenAI

    if not shutil.which("openssl"):
        pytest.skip("needs the openssl command")
    d = tmp_path_factory.mktemp("tls")

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "1",
        "-subj", "/CN=aisix test corporate CA")  # fmt: skip
    run(
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=127.0.0.1",
    )
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    run("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
        "-out", "server.pem", "-days", "1", "-extfile", "san.ext")  # fmt: skip
    server = FakeOpenAI()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(d / "server.pem", d / "server.key")
    server.socket = context.wrap_socket(server.socket, server_side=True)
    server.start()
    yield f"https://127.0.0.1:{server.server_address[1]}/v1", str(d / "ca.pem")
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("where", ["none", "gateway", "provider_key", "environment"])
def test_a_corporate_ca_over_real_tls(make_app, config, monkeypatch, tls_upstream, where):
    url, ca = tls_upstream
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    named(config, "provider_keys", "openai-main")["api_base"] = url
    if where == "gateway":
        config["gateway"]["upstream"]["ca_bundle"] = ca
    elif where == "provider_key":
        named(config, "provider_keys", "openai-main")["ca_bundle"] = ca
    elif where == "environment":
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", ca)
    r = make_app(config).test_client().post(ROUTE, headers=auth(), json=OK)
    if where == "none":  # certifi does not know the corporate CA: refused, not sent
        assert (r.status_code, r.get_json()["error"]["code"]) == (502, "upstream_unreachable")
        assert "certificate" in r.get_json()["error"]["message"].lower()
        assert r.headers["x-should-retry"] == "false"  # it will fail the same way until configured
    else:
        assert r.status_code == 200, r.get_data(as_text=True)
