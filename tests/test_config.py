"""Config loading: the example file, ${VAR}, every problem listed by path, the CLI commands."""

from __future__ import annotations

from pathlib import Path

import pytest

from aisix_flask import create_app
from aisix_flask.config import ConfigError, hash_key, load_config
from aisix_flask.providers.urls import endpoint_url

from .conftest import CALLER_KEY, base_config, named, sha, write_config

REPO = Path(__file__).resolve().parent.parent


def test_example_config_loads(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-x")
    monkeypatch.setenv("AISIX_DEV_KEY", "dev")
    monkeypatch.setenv("AISIX_ADMIN_KEY", "admin")
    monkeypatch.setenv("JINA_API_KEY", "jina")
    registry = load_config(str(REPO / "config.yaml"))
    assert registry.warnings == ()
    route = registry.router.resolve("image-prod").candidates[0].route
    assert (route.upstream_model, route.provider_key.api_key, route.provider_key.adapter) == (
        "gpt-image-1",
        "sk-x",
        "openai",
    )
    [dev] = registry.api_keys
    assert dev.key_hash == bytes.fromhex(hash_key("dev"))
    assert all(dev.may_use(alias) for alias in ("image-prod", "chat-prod", "embed", "rerank"))
    assert (
        not dev.may_use("gpt-4o")
        and registry.router.resolve("rerank").candidates[0].route.provider_key.adapter == "openai-compatible"
    )
    # The README retrieves openai/gpt-4.1 through the example's wildcard row.
    wildcard = registry.router.resolve("openai/gpt-4.1").candidates[0].route
    assert (wildcard.model.display_name, wildcard.upstream_model) == ("openai/*", "gpt-4.1")
    assert dev.may_use("openai/gpt-4.1")


def test_unset_variables_expand_to_empty_with_warnings(monkeypatch):
    for name in ("OPENAI_API_KEY", "AISIX_DEV_KEY", "AISIX_ADMIN_KEY", "JINA_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    registry = load_config(str(REPO / "config.yaml"))
    assert registry.provider_keys["openai-main"].api_key == ""
    assert registry.api_keys[0].key_hash is None  # an unset key_env never authenticates
    text = "\n".join(registry.warnings)
    assert "provider_keys[0].api_key: environment variable OPENAI_API_KEY is not set" in text
    assert "api_keys[0].key_env: AISIX_DEV_KEY is not set" in text


def test_every_problem_is_listed_by_path(tmp_path):
    path = write_config(
        tmp_path / "bad.yaml",
        {
            "gateway": {
                "request_body_limit_bytes": "big",
                "upstream": {"timeout_s": -1},
                "usage": {"journal": "", "queue_rows": 0},
            },
            "provider_keys": [
                {"display_name": "a", "provider": "openai", "adapter": "carrier-pigeon"},
                {"display_name": "a", "provider": "mistral"},
            ],
            "models": [
                {"display_name": "m", "provider": "openai", "provider_key": "a"},
                {"display_name": "m", "provider": "openai", "provider_key": "x"},
                {"display_name": "*-*", "provider": "openai", "provider_key": "a"},
                {"provider": "openai", "provider_key": "a", "model_name": "gpt-*"},
            ],
            "api_keys": [
                {"display_name": "k"},
                {"display_name": "j", "key_hash": "abc", "expires_at": "soon"},
            ],
            "guardrails": [
                {"name": "g", "kind": "toxicity", "patterns": []},
                {"name": "h", "kind": "keyword", "patterns": [{"kind": "regex", "value": "(unclosed"}]},
                {"name": "i", "kind": "keyword"},
                {
                    "name": "j",
                    "kind": "keyword",
                    "action": "mask",
                    "patterns": [{"kind": "literal", "value": "x"}],
                },
                {
                    "name": "k",
                    "kind": "pii",
                    "detectors": ["email", "dna"],
                    "custom_patterns": [{"name": "x"}],
                },
                {"name": "l", "kind": "pii", "custom_patterns": [{"name": "id", "pattern": "[a-"}]},
                {"name": "m", "kind": "pii", "patterns": [{"kind": "literal", "value": "x"}]},
                {"name": "n", "kind": "pii", "enforcement_mode": "shadow"},
            ],
        },
    )
    with pytest.raises(ConfigError) as info:
        load_config(str(path))
    problems = "\n".join(info.value.problems)
    for expected in (
        "gateway.request_body_limit_bytes: Not a valid integer.",
        "gateway.upstream.timeout_s: Must be greater than 0.",
        "gateway.usage.journal: Shorter than minimum length 1.",
        "gateway.usage.queue_rows: Must be greater than or equal to 1.",
        "provider_keys[0].adapter: Must be one of: anthropic, azure-openai, openai, openai-compatible.",
        "provider_keys[1].display_name: duplicate display_name 'a'",
        "provider_keys[1].api_base: required for provider 'mistral' (adapter 'openai-compatible')",
        "models[1].display_name: duplicate display_name 'm'",
        "models[1].provider_key: unknown provider key 'x'",
        "models[2].display_name: at most one '*' is allowed",
        "models[3].display_name: Missing data for required field.",
        "api_keys[0]: Give exactly one of key_hash or key_env.",
        "api_keys[1].key_hash: Must be 64 hex digits (SHA-256).",
        "api_keys[1].expires_at: Not a valid ISO-8601 datetime.",
        "guardrails[0].kind: Must be one of: keyword, pii.",
        "guardrails[0].patterns: Shorter than minimum length 1.",
        "guardrails[1].patterns[0].value: invalid regex: missing ), unterminated subpattern",
        "guardrails[2].patterns: Missing data for required field.",
        "guardrails[3].action: mask is for pii guardrails; keyword guardrails block.",
        "guardrails[4].detectors[1]: Must be one of: email, phone, credit_card, us_ssn, ip_address, api_key.",
        "guardrails[4].custom_patterns[0].pattern: Missing data for required field.",
        "guardrails[5].custom_patterns[0].pattern: invalid regex: unterminated character set",
        "guardrails[6].patterns: pii guardrails take detectors and custom_patterns.",
        "guardrails[7].enforcement_mode: Must be one of: enforce, monitor.",
    ):
        assert expected in problems
    assert str(path) in str(info.value)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("models: [\n  - {display_name: x\n", "cannot read config"),
        ("- just\n- a list\n", "the config file must be a YAML mapping"),
    ],
)
def test_unreadable_files(tmp_path, text, problem):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=problem):
        load_config(str(path))


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n", "{}\n", "---\n"])
def test_an_empty_file_refuses_start_up(tmp_path, text):
    """An emptied file (an editor saving in place truncates first) would refuse every caller."""
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match="the config file is empty: it defines no provider_keys"):
        create_app({"AISIX_CONFIG": str(path)})


def test_no_keys_or_models_is_a_warning(tmp_path, config):
    del config["api_keys"]
    config["models"] = []
    registry = load_config(str(write_config(tmp_path / "c.yaml", config)))
    assert "api_keys: none configured; every request to /v1 is refused with 401" in registry.warnings
    assert "models: none configured; every request to /v1 is refused with 404" in registry.warnings


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(str(tmp_path / "nope.yaml"))


def test_unknown_fields_load_with_a_warning(tmp_path, config):
    named(config, "models", "image-prod")["fallbacks"] = ["dalle"]
    config["routes"] = []
    registry = load_config(str(write_config(tmp_path / "c.yaml", config)))
    assert "models[0].fallbacks: unknown field, ignored" in registry.warnings
    assert "routes: unknown field, ignored" in registry.warnings


def test_expires_at_accepts_yaml_timestamps(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(
        f"api_keys:\n  - {{display_name: a, key_hash: {sha('a')}, expires_at: 2027-01-01T00:00:00Z}}\n"
        f"  - {{display_name: b, key_hash: {sha('b')}, expires_at: 2027-01-01}}\n"
    )
    a, b = load_config(str(path)).api_keys
    assert a.expires_at.isoformat() == b.expires_at.isoformat() == "2027-01-01T00:00:00+00:00"


def test_wildcards_most_specific_first(tmp_path, config):
    config["models"] += [
        {
            "display_name": "openai/gpt-*",
            "provider": "openai",
            "model_name": "x-*",
            "provider_key": "openai-main",
        },
        {"display_name": "*", "provider": "openai", "provider_key": "openai-main"},
    ]
    router = load_config(str(write_config(tmp_path / "c.yaml", config))).router
    assert router.resolve("image-prod").candidates[0].route.upstream_model == "gpt-image-1"  # exact wins
    assert router.resolve("openai/gpt-image-1").candidates[0].route.upstream_model == "x-image-1"
    assert router.resolve("openai/dall-e-3").candidates[0].route.upstream_model == "dall-e-3"
    assert router.resolve("anything").candidates[0].route.upstream_model == "anything"
    assert router.resolve("openai/gpt-image-1").candidates[0].route.model.display_name == "openai/gpt-*"


@pytest.mark.parametrize(
    ("base", "url"),
    [
        (None, "https://api.openai.com/v1/images/generations"),
        ("https://h.test/v1", "https://h.test/v1/images/generations"),
        ("https://h.test/v1/", "https://h.test/v1/images/generations"),
        ("https://h.test/v1/images/generations", "https://h.test/v1/images/generations"),
    ],
)
def test_endpoint_url_tolerates_pasted_paths(base, url):
    assert endpoint_url(base, "/images/generations") == url


def test_broken_config_fails_start_up(tmp_path):
    path = write_config(tmp_path / "c.yaml", {"models": [{"display_name": "m"}]})
    with pytest.raises(ConfigError, match=r"models\[0\].provider: Missing data"):
        create_app({"AISIX_CONFIG": str(path)})


def test_cli_check_config(app, tmp_path):
    runner = app.test_cli_runner()
    ok = runner.invoke(args=["aisix", "check-config", app.config["AISIX_CONFIG"]])
    assert ok.exit_code == 0
    assert "OK (5 provider keys, 11 models, 4 api keys, 1 guardrails" in ok.output
    bad = write_config(tmp_path / "bad.yaml", {"models": [{"display_name": "m", "provider_key": "x"}]})
    result = runner.invoke(args=["aisix", "check-config", str(bad)])
    assert result.exit_code == 1
    assert "models[0].provider: Missing data for required field." in result.output
    assert "models[0].provider_key: unknown provider key 'x'" in result.output


def test_cli_runs_even_when_the_config_is_broken(tmp_path, monkeypatch):
    """`flask --app wsgi aisix check-config` must report a broken file, not crash on import."""
    import subprocess
    import sys

    bad = write_config(tmp_path / "bad.yaml", {"models": [{"display_name": "m"}]})
    env = {"AISIX_CONFIG": str(bad), "PATH": "/usr/bin:/bin"}
    result = subprocess.run(
        [sys.executable, "-m", "flask", "--app", "wsgi", "aisix", "check-config"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert "models[0].provider: Missing data for required field." in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("local", ["warns", "broken", "missing"])
def test_cli_check_config_talks_about_the_named_file_only(tmp_path, local):
    """Whatever ./config.yaml is (with warnings, broken, absent), checking another file says
    nothing of it, and creates nothing (no var/ folder, no database)."""
    import subprocess
    import sys

    work = tmp_path / "work"
    work.mkdir()
    if local == "warns":
        (work / "config.yaml").write_text(
            'provider_keys:\n  - {display_name: p, provider: openai, api_key: "${UNSET_X}"}\n'
        )
    elif local == "broken":
        (work / "config.yaml").write_text("models: [\n")
    other = write_config(tmp_path / "other.yaml", base_config(tmp_path))
    result = subprocess.run(
        [sys.executable, "-m", "flask", "--app", "wsgi", "aisix", "check-config", str(other)],
        cwd=work,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert f"{other}: OK (5 provider keys, 11 models, 4 api keys" in result.stdout
    assert "config.yaml" not in result.stderr.replace(str(other), "") and "UNSET_X" not in result.stderr
    assert "Traceback" not in result.stderr
    assert sorted(p.name for p in work.iterdir()) == ([] if local == "missing" else ["config.yaml"])


def test_cli_hash_key(app):
    runner = app.test_cli_runner()
    assert runner.invoke(args=["aisix", "hash-key", CALLER_KEY]).output.strip() == sha(CALLER_KEY)
    assert runner.invoke(args=["aisix", "hash-key"], input="typed\n").output.strip().endswith(sha("typed"))
    new = runner.invoke(args=["aisix", "hash-key", "--new"]).output.split()
    assert new[0] == "key:" and new[1].startswith("sk-aisix-") and new[3] == sha(new[1])


def test_claude_and_azure_keys_and_their_defaults(tmp_path, config):
    config["provider_keys"] += [
        {"display_name": "claude", "provider": "anthropic", "api_key": "k"},  # no api_base: Anthropic's
        {"display_name": "az", "provider": "azure", "api_key": "k", "api_base": "https://r.openai.azure.com",
         "api_version": "2024-10-21"},
    ]  # fmt: skip
    config["models"] += [
        {"display_name": "claude", "provider": "anthropic", "model_name": "claude-x",
         "provider_key": "claude", "max_tokens_default": 1024},
        {"display_name": "az", "provider": "azure", "model_name": "dep", "provider_key": "az"},
    ]  # fmt: skip
    registry = load_config(str(write_config(tmp_path / "c.yaml", config)))
    claude = registry.router.resolve("claude").candidates[0].route
    azure = registry.router.resolve("az").candidates[0].route
    assert (claude.provider_key.adapter, claude.provider_key.api_base, claude.model.max_tokens_default) == (
        "anthropic",
        None,
        1024,
    )
    assert (azure.provider_key.adapter, azure.provider_key.api_version) == ("azure-openai", "2024-10-21")
    assert registry.router.resolve("image-prod").candidates[0].route.model.max_tokens_default == 4096


def test_bad_claude_and_azure_settings_are_named(tmp_path, config):
    config["provider_keys"].append(
        {"display_name": "az", "provider": "azure", "api_key": "k", "api_version": ""}
    )
    config["models"] += [
        {"display_name": "c", "provider": "openai", "model_name": "m", "provider_key": "openai-main",
         "max_tokens_default": 0},
        {"display_name": "r", "routing": {"targets": [{"model": "c"}]}, "max_tokens_default": 5},
    ]  # fmt: skip
    config["models"][0]["pricing"] = {"per_million_tokens": {"input": 1, "cached_input": 1, "cache_read": 1}}
    with pytest.raises(ConfigError) as error:
        load_config(str(write_config(tmp_path / "c.yaml", config)))
    problems = str(error.value)
    for expected in (
        "provider_keys[5].api_version: Shorter than minimum length 1.",
        "provider_keys[5].api_base: required for provider 'azure' (adapter 'azure-openai')",
        f"models[{len(config['models']) - 2}].max_tokens_default: Must be greater than or equal to 1.",
        f"models[{len(config['models']) - 1}].max_tokens_default: A routing model takes none of",
        "models[0].pricing.per_million_tokens.cache_read: cached_input and cache_read are one price",
    ):
        assert expected in problems, problems
