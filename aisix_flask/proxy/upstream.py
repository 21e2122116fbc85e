"""Upstream calls: one pooled Session per thread, one POST per request (whole, or streamed)."""

from __future__ import annotations

import functools
import http.cookiejar
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter
from requests.structures import CaseInsensitiveDict
from urllib3.exceptions import HTTPError, NameResolutionError, NewConnectionError, ReadTimeoutError

from .. import __version__
from ..config.resources import ProviderKey, UpstreamSettings
from ..errors import (
    UpstreamTimeout,
    UpstreamUnreachable,
)
from ..redact import without_credentials
from ..workers import on_greenlets
from .outcomes import Answer

USER_AGENT = f"aisix-flask/{__version__}"
_local = threading.local()
_shared: requests.Session | None = None


def session() -> requests.Session:
    """The Session for this call: pooled, no proxies/.netrc from the environment, no cookies.

    One per thread under gthread (a thread serves request after request: its pool stays warm and
    no lock is shared). Under gevent a request is a greenlet that lives for that request only, so
    a greenlet's own Session would reconnect every time: there the process shares one, whose pool
    keeps up to ``SHARED_POOL`` connections per upstream host.
    """
    global _shared
    if on_greenlets():
        if _shared is None:
            _shared = _new_session(SHARED_POOL)
        return _shared
    s = getattr(_local, "session", None)
    if s is None:
        s = _local.session = _new_session(8)
    return s


SHARED_POOL = 1024


def _new_session(pool: int) -> requests.Session:
    s = requests.Session()
    s.trust_env = False
    s.cookies.set_policy(http.cookiejar.DefaultCookiePolicy(allowed_domains=[]))
    adapter = HTTPAdapter(pool_connections=16, pool_maxsize=pool, max_retries=0)
    s.mount("https://", adapter)
    s.mount("http://", adapter)
    return s


@dataclass(frozen=True)
class Timeout:
    """An upstream call's connect timeout and its read budget for the whole answer."""

    connect_s: float
    read_s: float

    @property
    def slot_ttl_s(self) -> float:
        """How long a concurrency slot may live: the longest the call can take, and a margin."""
        return self.connect_s + self.read_s + 30


# What urllib reads for proxies (in either case). Working proxies out from them means a scan of
# the whole environment (a tenth of a millisecond), so the answer is kept per URL for as long as
# these variables keep their values.
_PROXY_VARIABLES: tuple[str, ...] = ("http_proxy", "https_proxy", "all_proxy", "no_proxy")
_PROXY_VARIABLES += tuple(name.upper() for name in _PROXY_VARIABLES)


@functools.lru_cache(maxsize=256)
def _environ_proxies(url: str, _values: tuple[str | None, ...]) -> dict[str, str]:
    return requests.utils.get_environ_proxies(url)


def route_settings(
    url: str, key: ProviderKey, settings: UpstreamSettings
) -> tuple[dict[str, str], str | bool]:
    """The proxies and TLS verification for a call: the provider key's, else the gateway's, else the
    environment's (``HTTPS_PROXY``/``HTTP_PROXY``/``NO_PROXY``, ``REQUESTS_CA_BUNDLE``), else
    direct and certifi. ``.netrc`` is never read: the Session does not trust the environment."""
    proxy = key.proxy or settings.proxy
    if proxy:
        proxies = {"http": proxy, "https": proxy}
    else:
        proxies = dict(_environ_proxies(url, tuple(map(os.environ.get, _PROXY_VARIABLES))))
    verify = key.ca_bundle or settings.ca_bundle or os.environ.get("REQUESTS_CA_BUNDLE") or True
    return proxies, verify


def post(
    url: str,
    payload: Any,  # bytes, or an iterable with a length (a form's parts)
    *,
    credentials: dict[str, str],
    request_id: str,
    timeout: tuple[float, float],
    proxies: dict[str, str] | None = None,
    verify: str | bool = True,
    stream: bool = False,
    content_type: str = "application/json",
) -> Answer | requests.Response:
    """POST ``payload`` once (never retried: generations are billed) and read the whole answer;
    with ``stream``, the open response when the upstream answers with events (the caller reads and
    closes it), else its whole answer (an error, or JSON after all)."""
    # identity for a stream: compressed events would sit in the decompressor instead of reaching
    # the caller.
    prepared = _prepare(url, payload, credentials, request_id, stream, content_type)
    # requests' read timeout is per socket read; the deadline bounds the whole answer
    # so an upstream trickling bytes cannot hold a worker thread forever.
    deadline = time.monotonic() + timeout[1]
    with _failures_mapped(url, proxies, timeout):
        r = _send(prepared, timeout, proxies, verify)
        if stream and 200 <= r.status_code < 300 and r.headers.get("Content-Type", "").startswith(EVENTS):
            return r
        with r:
            return _answer(r, _read_until(r, deadline))


EVENTS = "text/event-stream"


def fetch(
    method: str,
    url: str,
    *,
    credentials: dict[str, str],
    request_id: str,
    timeout: tuple[float, float],
    proxies: dict[str, str] | None = None,
    verify: str | bool = True,
) -> Answer:
    """``method`` (GET, DELETE) ``url`` once, with no body, and read the whole answer: what the
    upstream holds (a stored response), never a generation."""
    headers = {
        **credentials,
        "Accept": "application/json",
        "User-Agent": USER_AGENT,
        "x-request-id": request_id,
    }
    prepared = requests.PreparedRequest()
    prepared.prepare(method=method, url=url, headers=headers)
    deadline = time.monotonic() + timeout[1]
    with _failures_mapped(url, proxies, timeout):
        r = _send(prepared, timeout, proxies, verify)
        with r:
            return _answer(r, _read_until(r, deadline))


def _prepare(
    url: str, payload: Any, credentials: dict[str, str], request_id: str, stream: bool, content_type: str
) -> requests.PreparedRequest:
    # Every header is named here: nothing of the caller's, nothing merged from Session defaults.
    headers = {
        **credentials,  # the provider key, as its bridge sends it
        "Content-Type": content_type,
        "Accept": EVENTS if stream else "application/json",
        "Accept-Encoding": "identity" if stream else "gzip, deflate",
        "User-Agent": USER_AGENT,
        "x-request-id": request_id,
    }
    prepared = requests.PreparedRequest()
    ready_url = _ready_url(url)
    if ready_url is None:  # credentials in the URL: requests' whole preparation turns them into auth
        prepared.prepare(method="POST", url=url, headers=headers, data=payload)
        return prepared
    # The parts of prepare() a gateway's POST needs, the URL's worked out once (prepare() took
    # 65 µs a call, most of it parsing and quoting the same few URLs again; this takes 16).
    prepared.method = "POST"
    prepared.url = ready_url
    prepared.headers = CaseInsensitiveDict(headers)
    prepared.prepare_cookies(None)
    prepared.prepare_body(payload, None)
    return prepared


@functools.lru_cache(maxsize=512)
def _ready_url(url: str) -> str | None:
    """``url`` as requests sends it (checked, IDNA-encoded, quoted); None when it carries
    credentials. The upstream URLs come from the config: a few per provider key."""
    if any(requests.utils.get_auth_from_url(url)):
        return None
    prepared = requests.PreparedRequest()
    prepared.prepare_url(url, None)
    return prepared.url


def _send(
    prepared: requests.PreparedRequest,
    timeout: tuple[float, float],
    proxies: dict[str, str] | None,
    verify: str | bool,
) -> requests.Response:
    # send() skips Session.request's per-call merging of environment and session
    # settings (none apply: trust_env is off and the headers are complete).
    return session().send(
        prepared, timeout=timeout, allow_redirects=False, stream=True, verify=verify, proxies=proxies or {}
    )


def _answer(r: requests.Response, content: bytes) -> Answer:
    return Answer(
        status=r.status_code,
        content=content,
        content_type=r.headers.get("Content-Type") or "application/json",
        retry_after=r.headers.get("Retry-After"),
        should_retry=r.headers.get("x-should-retry"),
    )


@contextmanager
def _failures_mapped(
    url: str, proxies: dict[str, str] | None, timeout: tuple[float, float]
) -> Iterator[None]:
    """Turn what requests and urllib3 raise into the upstream table's answers."""
    host = urlsplit(url).hostname or url
    try:
        yield
    # Timeouts first: ConnectTimeout is a ConnectionError too.
    except requests.ConnectTimeout:
        raise _timeout(host, timeout[0], should_retry=True) from None  # nothing was sent
    except (requests.Timeout, ReadTimeoutError):
        raise _timeout(host, timeout[1]) from None
    except requests.exceptions.ProxyError as e:
        proxy = urlsplit((proxies or {}).get(urlsplit(url).scheme, ""))
        raise UpstreamUnreachable(
            f"Could not reach the upstream {host} through the proxy {proxy.hostname}:{proxy.port}: "
            f"{without_credentials(str(_innermost(e)))}",
            should_retry=_never_sent(e),
        ) from None
    except requests.ConnectionError as e:
        if isinstance(_innermost(e), ReadTimeoutError):
            raise _timeout(host, timeout[1]) from None
        # Refused or unresolvable: the request never left, so a retry cannot bill twice.
        raise UpstreamUnreachable(
            f"Could not reach the upstream {host}: {_innermost(e)}", should_retry=_never_sent(e)
        ) from None
    except (requests.RequestException, HTTPError) as e:
        raise UpstreamUnreachable(f"The connection to the upstream {host} failed: {_innermost(e)}") from None


def _read_until(r: requests.Response, deadline: float) -> bytes:
    """The whole (decoded) body, or Timeout once ``deadline`` passes.

    ``read1`` returns whatever has arrived, so an upstream that trickles its answer a byte at
    a time is caught at the deadline rather than when a 64 KiB read finally fills up.
    """
    chunks = []
    while chunk := r.raw.read1(64 * 1024, decode_content=True):
        chunks.append(chunk)
        if time.monotonic() > deadline:
            raise requests.Timeout("deadline passed while reading the answer")
    return b"".join(chunks)


def _never_sent(e: BaseException) -> bool:
    """Whether the failure happened while connecting, before any byte of the request was sent."""
    return any(isinstance(x, NewConnectionError | NameResolutionError) for x in _chain(e))


def _timeout(host: str, seconds: float, should_retry: bool = False) -> UpstreamTimeout:
    return UpstreamTimeout(
        f"The upstream {host} did not answer within {seconds:g} s.", should_retry=should_retry
    )


def _chain(e: BaseException) -> list[BaseException]:
    """``e`` and the causes buried in requests' and urllib3's wrappers, outermost first."""
    chain = [e]
    while True:
        inner = getattr(chain[-1], "reason", None)
        if (
            not isinstance(inner, BaseException)
            and chain[-1].args
            and isinstance(chain[-1].args[-1], BaseException)
        ):
            inner = chain[-1].args[-1]
        if not isinstance(inner, BaseException) or any(inner is x for x in chain):
            return chain
        chain.append(inner)


def _innermost(e: BaseException) -> BaseException:
    """The root cause (its text names no credentials)."""
    return _chain(e)[-1]
