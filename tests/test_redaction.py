"""Redaction by key name: the default names, their plurals, and the LLM counters they spare."""

from __future__ import annotations

import re

import pytest

from eventlog_persist import DEFAULT_REDACT_KEYS, prepare_payload

REDACTED = "[REDACTED]"


# --- key names: the additions, plurals and the token-counter rule ---------------------------

ADDED_NAME_SPELLINGS = [
    "pwd",
    "PWD",
    "db_pwd",
    "secrets",
    "Secrets",
    "client_secrets",
    "api_keys",
    "apiKeys",
    "API-KEYS",
    "openai_api_keys",
    "dsn",
    "DSN",
    "sentry_dsn",
    "database_url",
    "DATABASE_URL",
    "databaseUrl",
    "database-uri",
    "SQLALCHEMY_DATABASE_URI",
    "mongodb_url",
    "connection_string",
    "ConnectionString",
    "connection-string",
    "conn_str",
    "signing_key",
    "JWT_SIGNING_KEY",
    "encryptionKey",
    "encryption-keys",
    "master_key",
    "passwords",
    "private_keys",
    "credentials",
    "cookies",
    "jwts",
]


@pytest.mark.parametrize("key", ADDED_NAME_SPELLINGS)
def test_added_names_and_plurals_are_redacted(key: str) -> None:
    result = prepare_payload({"config": {key: "not-for-logs", "region": "eu"}})
    assert result.value == {
        "config": {key: REDACTED, "region": "eu"},
        "_redacted": [f"/config/{key}"],
    }


# Every default name except the token names, whose plural counts tokens.
PLURAL_NAMES = sorted(name for name in DEFAULT_REDACT_KEYS if not name.endswith("token"))
TOKEN_NAMES = sorted(name for name in DEFAULT_REDACT_KEYS if name.endswith("token"))


@pytest.mark.parametrize("name", PLURAL_NAMES)
def test_the_plural_of_every_secret_name_is_redacted(name: str) -> None:
    words = re.split(r"[-_]", name)
    for key in (
        f"{name}s",
        f"{name}s".upper(),
        words[0] + "".join(word.capitalize() for word in words[1:]) + "s",
        f"my_{name}s",
    ):
        result = prepare_payload({key: ["a", "b"]})
        assert result.redacted_paths == (f"/{key}",), key


@pytest.mark.parametrize("name", TOKEN_NAMES)
def test_token_names_have_no_plural(name: str) -> None:
    # The singular is a secret, the plural a counter (or a list of text pieces).
    assert prepare_payload({name: "t"}).redacted_paths == (f"/{name}",)
    for key in (f"{name}s", f"{name}s".upper(), f"max_{name}s"):
        result = prepare_payload({key: 12})
        assert result.value == {key: 12}, key


LLM_FIELDS = [
    "tokens",
    "input_tokens",
    "output_tokens",
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "max_tokens",
    "max_completion_tokens",
    "max_output_tokens",
    "cached_tokens",
    "reasoning_tokens",
    "cache_read_input_tokens",
    "cache_creation_input_tokens",
    "maxTokens",
    "inputTokens",
    "token_count",
    "num_tokens",
    "tokenizer",
    "token_ids",
    "top_logprobs",
]


@pytest.mark.parametrize("key", LLM_FIELDS)
def test_ordinary_llm_fields_stay_visible(key: str) -> None:
    payload = {"usage": {key: 812}, "model": {key: "cl100k_base"}}
    result = prepare_payload(payload)
    assert result.value == payload
    assert result.redacted_paths == ()
