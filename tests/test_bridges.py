"""Where each adapter's bridge sends a request and which headers carry the key (README, the
adapter table), apart from HTTP."""

from __future__ import annotations

import pytest

from aisix_flask.config import ConfigError, load_config
from aisix_flask.config.resources import ProviderKey
from aisix_flask.providers import bridge_for

from .conftest import write_config


def key(adapter: str, api_base: str | None, api_version: str | None = None) -> ProviderKey:
    return ProviderKey("k", "p", adapter, "SECRET", api_base, api_version=api_version)


DEPLOYMENT = "https://r.openai.azure.com/openai/deployments/dep/chat/completions?api-version=2024-10-21"


@pytest.mark.parametrize(
    "api_base",
    [
        "https://r.openai.azure.com",
        "https://r.openai.azure.com/",
        "https://r.openai.azure.com/openai",
        "https://r.openai.azure.com/openai/v1/",
        "https://r.openai.azure.com/openai/deployments/other",
        "https://r.openai.azure.com/openai/deployments/other/chat/completions?api-version=2024-02-01",
    ],
)
def test_azure_urls_from_whatever_was_pasted(api_base):
    bridge = bridge_for("azure-openai")
    assert bridge.url(key("azure-openai", api_base, "2024-10-21"), "/chat/completions", "dep") == DEPLOYMENT
    assert (
        bridge.url(key("azure-openai", api_base), "/embeddings", "m")
        == "https://r.openai.azure.com/openai/v1/embeddings"
    )


BEARER = {"Authorization": "Bearer SECRET"}
ANTHROPIC = {"x-api-key": "SECRET", "anthropic-version": "2023-06-01"}


@pytest.mark.parametrize(
    ("adapter", "api_base", "url", "headers"),
    [
        ("openai", None, "https://api.openai.com/v1/chat/completions", BEARER),
        ("openai-compatible", "https://x.test/v1/", "https://x.test/v1/chat/completions", BEARER),
        ("azure-openai", "https://r.azure.com", "https://r.azure.com/openai/v1/chat/completions",
         {"api-key": "SECRET"}),
        ("anthropic", None, "https://api.anthropic.com/v1/messages", ANTHROPIC),
        ("anthropic", "https://claude.corp/v1/", "https://claude.corp/v1/messages", ANTHROPIC),
    ],
)  # fmt: skip
def test_each_bridges_url_and_key_headers(adapter, api_base, url, headers):
    bridge = bridge_for(adapter)
    assert bridge.url(key(adapter, api_base), "/chat/completions", "m") == url
    assert bridge.credentials(key(adapter, api_base)) == headers


@pytest.mark.parametrize(
    ("provider", "adapter", "required"),
    [
        ("openai", None, False),
        ("anthropic", None, False),
        ("anthropic", "openai-compatible", True),  # else an Anthropic key would go to OpenAI
        ("openai", "azure-openai", True),
        ("azure", None, True),
        ("groq", "openai", True),
    ],
)
def test_api_base_is_required_unless_the_adapter_knows_its_providers_address(
    tmp_path, config, provider, adapter, required
):
    row = {
        "display_name": "x",
        "provider": provider,
        "api_key": "k",
        **({"adapter": adapter} if adapter else {}),
    }
    config["provider_keys"].append(row)
    path = write_config(tmp_path / "c.yaml", config)
    if not required:
        load_config(str(path))
        return
    with pytest.raises(ConfigError, match=r"provider_keys\[5\].api_base: required for provider"):
        load_config(str(path))
