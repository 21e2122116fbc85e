"""What the upstream answered, and the upstream outcome table of docs/contract.md."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from ..config.resources import ProviderKey
from ..errors import UpstreamAuthFailed, UpstreamBadResponse, UpstreamError
from ..providers import Conversion

MESSAGE_LIMIT = 1024


@dataclass
class Answer:
    """What the upstream said: status, body bytes and the headers that are passed on."""

    status: int
    content: bytes
    content_type: str
    retry_after: str | None
    document: Any = None
    should_retry: str | None = None  # the upstream's own x-should-retry, if it sent one

    def error_code(self) -> str:
        """The upstream's own ``error.code`` (or ``type``) for the ledger, else ``upstream_<status>``."""
        error = self.document.get("error") if isinstance(self.document, dict) else None
        if isinstance(error, dict):
            for field in ("code", "type"):
                value = error.get(field)
                if isinstance(value, str) and value:
                    return value[:64]
        return f"upstream_{self.status}"


def interpret(answer: Answer, key: ProviderKey, conversion: Conversion, alias: str) -> Answer:
    """Apply the upstream table: raise what the gateway answers itself, return what passes on
    (an answer in another API than the caller's translated by ``conversion`` first)."""
    status = answer.status
    try:
        answer.document = json.loads(answer.content)
    except ValueError:
        answer.document = None
    translated = conversion.answer(status, answer.document, alias)
    if translated is not None:
        answer.document = translated
        answer.content = json.dumps(translated, ensure_ascii=False).encode()
        answer.content_type = "application/json"
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
    message = error.get("message") if isinstance(error, dict) else None
    if isinstance(message, str):
        text = message
    else:
        text = answer.content[:MESSAGE_LIMIT].decode("utf-8", "replace").strip() or "(empty body)"
    if key.api_key:
        text = text.replace(key.api_key, "***")
    return text[:MESSAGE_LIMIT]
