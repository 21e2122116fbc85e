"""Upstream calls: one pooled Session per thread, and the upstream outcome table of docs/contract.md."""

from __future__ import annotations

import functools
import http.cookiejar
import json
import os
import threading
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter
from urllib3.exceptions import HTTPError, NameResolutionError, NewConnectionError, ReadTimeoutError

from .. import __version__
from ..config.resources import ProviderKey, UpstreamSettings
from ..errors import (
    UpstreamAuthFailed,
    UpstreamBadResponse,
    UpstreamError,
    UpstreamTimeout,
    UpstreamUnreachable,
)
from ..redact import without_credentials

USER_AGENT = f"aisix-flask/{__version__}"
MESSAGE_LIMIT = 1024
_local = threading.local()


def session() -> requests.Session:
    """This thread's Session: pooled, no proxies/.netrc from the environment, no cookies."""
    s = getattr(_local, "session", None)
    if s is None:
        s = requests.Session()
        s.trust_env = False
        s.cookies.set_policy(http.cookiejar.DefaultCookiePolicy(allowed_domains=[]))
        adapter = HTTPAdapter(pool_connections=8, pool_maxsize=8, max_retries=0)
        s.mount("https://", adapter)
        s.mount("http://", adapter)
        _local.session = s
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


@dataclass
class Answer:
    """What the upstream said: status, body bytes and the headers that are passed on."""

    status: int
    content: bytes
    content_type: str
    retry_after: str | None
    latency_ms: float
    document: Any = None

    def error_code(self) -> str:
        """The upstream's own ``error.code`` (or ``type``) for the ledger, else ``upstream_<status>``."""
        error = self.document.get("error") if isinstance(self.document, dict) else None
        if isinstance(error, dict):
            for field in ("code", "type"):
                if isinstance(error.get(field), str) and error[field]:
                    return error[field][:64]
        return f"upstream_{self.status}"


# What urllib reads for proxies (in either case). Working proxies out from them means a scan of
# the whole environment (a tenth of a millisecond), so the answer is kept per URL for as long as
# these variables keep their values.
_PROXY_VARIABLES = ("http_proxy", "https_proxy", "all_proxy", "no_proxy")
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


def post_json(
    url: str,
    payload: bytes,
    *,
    key: ProviderKey,
    request_id: str,
    timeout: tuple[float, float],
    proxies: dict[str, str] | None = None,
    verify: str | bool = True,
) -> Answer:
    """POST ``payload`` once (never retried: generations are billed) and read the whole answer."""
    # Every header is named here: nothing of the caller's, nothing merged from Session defaults.
    headers = {
        "Authorization": f"Bearer {key.api_key}",
        "Content-Type": "application/json",
        "Accept": "application/json",
        "Accept-Encoding": "gzip, deflate",
        "User-Agent": USER_AGENT,
        "x-request-id": request_id,
    }
    prepared = requests.PreparedRequest()
    prepared.prepare(method="POST", url=url, headers=headers, data=payload)
    started = time.perf_counter()
    # requests' read timeout is per socket read; the deadline bounds the whole answer
    # so an upstream trickling bytes cannot hold a worker thread forever.
    deadline = time.monotonic() + timeout[1]
    host = urlsplit(url).hostname or url
    try:
        # send() skips Session.request's per-call merging of environment and session
        # settings (none apply: trust_env is off and the headers are complete).
        with session().send(
            prepared,
            timeout=timeout,
            allow_redirects=False,
            stream=True,
            verify=verify,
            proxies=proxies or {},
        ) as r:
            content = _read_until(r, deadline)
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
    return Answer(
        status=r.status_code,
        content=content,
        content_type=r.headers.get("Content-Type") or "application/json",
        retry_after=r.headers.get("Retry-After"),
        latency_ms=(time.perf_counter() - started) * 1000,
    )


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


def interpret(answer: Answer, key: ProviderKey) -> Answer:
    """Apply the upstream table: raise what the gateway answers itself, return what passes on."""
    status = answer.status
    try:
        answer.document = json.loads(answer.content)
    except ValueError:
        answer.document = None
    if 200 <= status < 300:
        if not isinstance(answer.document, dict):
            raise UpstreamBadResponse(
                f"The upstream answered HTTP {status} with a body that is not a JSON object."
            )
        return answer
    if 300 <= status < 400:
        raise UpstreamBadResponse(
            f"The upstream answered with a redirect (HTTP {status}), which the gateway does not "
            f"follow; check api_base of provider key '{key.display_name}'."
        )
    if status == 407:
        # A forward proxy refused the gateway's proxy credentials: nothing reached the upstream.
        raise UpstreamAuthFailed(
            "The outbound proxy rejected the gateway's proxy credentials (HTTP 407); check the proxy "
            f"URL of provider key '{key.display_name}' or gateway.upstream.proxy."
        )
    if status in (401, 403):
        # The upstream's own message is not passed on: it may quote part of the key.
        raise UpstreamAuthFailed(
            f"The upstream rejected the credential of provider key '{key.display_name}' "
            f"(HTTP {status}); check its api_key."
        )
    if status >= 500 or status < 200:
        raise UpstreamError(f"The upstream failed (HTTP {status}): {upstream_message(answer, key)}")
    if not (isinstance(answer.document, dict) and isinstance(answer.document.get("error"), dict)):
        # A 4xx keeps its status, but its body must still be the OpenAI envelope.
        error = UpstreamError(
            f"The upstream answered HTTP {status}: {upstream_message(answer, key)}",
            error_code=f"upstream_{status}",
            headers={"Retry-After": answer.retry_after} if answer.retry_after else None,
            should_retry=status == 429,
        )
        error.code = status  # the upstream's status, in the gateway's envelope
        raise error
    return answer


def upstream_message(answer: Answer, key: ProviderKey) -> str:
    """The upstream's error message, at most 1 KiB, with the upstream key scrubbed out."""
    error = answer.document.get("error") if isinstance(answer.document, dict) else None
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        text = error["message"]
    else:
        text = answer.content[:MESSAGE_LIMIT].decode("utf-8", "replace").strip() or "(empty body)"
    if key.api_key:
        text = text.replace(key.api_key, "***")
    return text[:MESSAGE_LIMIT]
