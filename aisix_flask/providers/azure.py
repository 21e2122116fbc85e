"""Azure OpenAI: OpenAI's bodies and answers, Azure's URLs and key header."""

from __future__ import annotations

from ..config.resources import ProviderKey
from .bridge import Bridge


class AzureOpenAI(Bridge):
    """An Azure OpenAI resource: OpenAI's bodies and answers, its own URLs and key header.

    With ``api_version`` on the provider key, the deployment URLs
    (``{api_base}/openai/deployments/{model_name}/chat/completions?api-version=…``); without, the
    v1 API (``{api_base}/openai/v1/chat/completions``, the model in the body).
    """

    def url(self, key: ProviderKey, path: str, upstream_model: str) -> str:
        # The resource's address, whatever was pasted after it (/openai/v1, a deployment's URL, the
        # portal's "target URI" with its ?api-version=).
        base = (key.api_base or "").split("?")[0].rstrip("/")
        base = base[: base.find("/openai")] if "/openai" in base else base
        if key.api_version and path.startswith("/responses"):  # (no deployment: the model is in the body)
            return f"{base}/openai{path}?api-version={key.api_version}"
        if key.api_version:
            return f"{base}/openai/deployments/{upstream_model}{path}?api-version={key.api_version}"
        return f"{base}/openai/v1{path}"

    def credentials(self, key: ProviderKey) -> dict[str, str]:
        return {"api-key": key.api_key}
