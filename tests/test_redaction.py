"""Redaction by key name (the default names, plurals, LLM counters) and by value shape.

Every secret here is fake and put together at run time ("sk-" + "a" * 48), so that no
secret-shaped literal sits in the repository.
"""

from __future__ import annotations

import base64
import importlib.util
import json
import re
import uuid
from decimal import Decimal
from pathlib import Path
from types import ModuleType
from typing import Any, NamedTuple

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from eventlog_persist import (
    DEFAULT_DETECTORS,
    DEFAULT_REDACT_KEYS,
    PayloadPolicy,
    PreparedPayload,
    prepare_payload,
)
from eventlog_persist.exceptions import ConfigurationError

ROOT = Path(__file__).resolve().parent.parent
REDACTED = "[REDACTED]"
NO_DETECTORS = PayloadPolicy(detectors=frozenset())


def only(*names: str) -> PayloadPolicy:
    return PayloadPolicy(detectors=frozenset(names))


def without(name: str) -> PayloadPolicy:
    return PayloadPolicy(detectors=DEFAULT_DETECTORS - {name})


def text_of(result: PreparedPayload) -> Any:
    assert isinstance(result.value, dict)
    return result.value["t"]


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
    # Dotted names, as OpenTelemetry-style attributes are spelled.
    "api.key",
    "llm.api.key",
    "private.key",
    "db.password",
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


# --- value detectors -------------------------------------------------------------------------


def jwt(claims: dict[str, object], signature: str = "x" * 43) -> str:
    """A fake JSON Web Token: base64url JSON parts, as a real one has, and a dummy signature."""

    def part(data: dict[str, object]) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")

    return f"{part({'alg': 'HS256', 'typ': 'JWT'})}.{part(claims)}.{signature}"


class Secret(NamedTuple):
    detector: str
    text: str
    stored: str  # what the text becomes


def whole(detector: str, secret: str) -> Secret:
    return Secret(detector, secret, REDACTED)


DB_PASSWORD = "p4ss" + "word"
SECRETS = [
    whole("llm_api_key", "sk-" + "a" * 48),
    whole("llm_api_key", "sk-ant-" + "a" * 20),  # the shortest
    whole("llm_api_key", "sk-" + "AbC123" * 8),
    whole("llm_api_key", "sk-proj-" + "Ab1_-" * 4),
    whole("llm_api_key", "sk-proj-" + "q" * 156),
    whole("llm_api_key", "sk-ant-api03-" + "z" * 93 + "AA"),
    whole("llm_api_key", "sk-svcacct-" + "b" * 30),
    whole("llm_api_key", "sk-admin-" + "c" * 30),
    whole("llm_api_key", "sk-None-" + "d" * 30),
    whole("aws_access_key", "AKIA" + "A1B2" * 4),
    whole("aws_access_key", "ASIA" + "Z" * 16),
    whole("git_host_token", "ghp_" + "a1" * 18),
    whole("git_host_token", "gho_" + "b" * 36),
    whole("git_host_token", "ghu_" + "c" * 36),
    whole("git_host_token", "ghs_" + "d" * 36),
    whole("git_host_token", "ghr_" + "e" * 36),
    whole("git_host_token", "github_pat_" + "A" * 22 + "_" + "b" * 59),
    whole("git_host_token", "github_pat_" + "A" * 22),  # the shortest
    whole("git_host_token", "glpat-" + "x" * 20),
    whole("slack_token", "xoxb-" + "123456789012-1234567890123-" + "a" * 24),
    whole("slack_token", "xoxp-" + "1" * 10),
    whole("slack_token", "xoxa-" + "2" * 12),
    whole("slack_token", "xoxr-" + "3" * 12),
    whole("slack_token", "xoxs-" + "4" * 12),
    whole("jwt", jwt({"sub": "1234567890", "name": "Test"})),
    whole("jwt", jwt({"sub": "u"}, signature="")),  # unsigned: "alg": "none"
    whole("jwt", "eyJa.eyJb."),  # the shortest
    Secret("bearer_token", "Bearer " + "opaque" + "1" * 10, "Bearer " + REDACTED),
    Secret("bearer_token", "bearer " + "AbCdEfGhIj", "bearer " + REDACTED),
    Secret("bearer_token", "Bearer " + "abcdefg1", "Bearer " + REDACTED),  # the shortest
    Secret("bearer_token", "Bearer " + "aBcdefgh", "Bearer " + REDACTED),  # a capital inside
    Secret("bearer_token", "Bearer\t" + "x9" * 8 + "==", "Bearer\t" + REDACTED),
    Secret(
        "url_password",
        "postgresql://app:" + DB_PASSWORD + "@db:5432/app",
        f"postgresql://app:{REDACTED}@db:5432/app",
    ),
    Secret(
        "url_password",
        "redis://:" + DB_PASSWORD + "@cache:6379/0",
        f"redis://:{REDACTED}@cache:6379/0",
    ),
    Secret(
        "url_password", "amqp://user:" + "p@ss" + "@mq/vhost", f"amqp://user:{REDACTED}@mq/vhost"
    ),
    Secret("url_password", "x://:" + "p" + "@h", f"x://:{REDACTED}@h"),
    Secret("url_password", "x://:" + "p" + "@", f"x://:{REDACTED}@"),  # the shortest
    Secret(
        "url_password",
        "https://user:" + DB_PASSWORD + "@example.com/x?y=1#z",
        f"https://user:{REDACTED}@example.com/x?y=1#z",
    ),
]

# Close to a secret, but not one: each must stay exactly as it is.
NEAR_MISSES = [
    ("llm_api_key", "sk-" + "a" * 31),  # bare form too short
    ("llm_api_key", "sk-proj-" + "a" * 19),
    ("llm_api_key", "sk-learn-pipeline-for-text-classification-and-more"),  # a slug
    ("llm_api_key", "task-" + "a" * 48),  # inside a word
    ("llm_api_key", "sk_" + "a" * 48),
    ("aws_access_key", "AKIA" + "A" * 15),
    ("aws_access_key", "AKIA" + "A" * 17),  # longer than a key id
    ("aws_access_key", "AKIA" + "a" * 16),  # lower case
    ("aws_access_key", "XAKIA" + "A" * 16),
    ("aws_access_key", "AKIB" + "A" * 16),
    ("git_host_token", "ghp_" + "a" * 35),
    ("git_host_token", "ghx_" + "a" * 36),
    ("git_host_token", "xghp_" + "a" * 36),
    ("git_host_token", "github_pat_" + "a" * 21),
    ("git_host_token", "glpat-" + "a" * 19),
    ("git_host_token", "xglpat-" + "a" * 20),
    ("slack_token", "xoxo-" + "1" * 20),  # hugs and kisses
    ("slack_token", "xoxb-" + "1" * 9),
    ("slack_token", "xoxb_" + "1" * 20),
    ("slack_token", "axoxb-" + "1" * 20),
    ("jwt", "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ1In0"),  # two parts only
    ("jwt", "eyJhbGciOiJIUzI1NiJ9.abc.def"),  # the claims are not JSON
    ("jwt", "xeyJhbGci.eyJzdWIi.sig"),
    ("bearer_token", "Bearer authentication is described in RFC 6750."),
    ("bearer_token", "the bearer of bad news"),
    ("bearer_token", "Bearer abc123"),  # under 8 characters
    ("bearer_token", "Bearer tokens/cookies"),  # prose: no digit, no inner capital
    ("bearer_token", "Bearer Abcdefghij"),  # a capital only first: a word, not a token
    ("bearer_token", "cupbearer " + "x1" * 8),  # inside a word
    ("url_password", "https://example.com:8443/path"),
    ("url_password", "https://user@example.com/"),
    ("url_password", "mailto:user@example.com"),
    ("url_password", "https://example.com/a:b@c"),
    ("url_password", "see ://user:pw@host"),  # no scheme
]


def test_every_detector_has_samples_of_both_kinds() -> None:
    value_detectors = DEFAULT_DETECTORS - {"header_pair"}
    assert {secret.detector for secret in SECRETS} == value_detectors
    assert {name for name, _ in NEAR_MISSES} == value_detectors


@pytest.mark.parametrize("secret", SECRETS, ids=lambda s: f"{s.detector}-{s.text[:12]}")
def test_secret_is_masked_alone_and_in_text(secret: Secret) -> None:
    alone = prepare_payload({"t": secret.text})
    assert text_of(alone) == secret.stored
    assert alone.redacted_paths == ("/t",)
    sentence = f"Bitte prüfen: {secret.text}, danach löschen."
    result = prepare_payload({"t": sentence})
    assert text_of(result) == f"Bitte prüfen: {secret.stored}, danach löschen."
    assert result.redacted_paths == ("/t",)
    assert result.value == {"t": text_of(result), "_redacted": ["/t"]}


@pytest.mark.parametrize("secret", SECRETS, ids=lambda s: f"{s.detector}-{s.text[:12]}")
@pytest.mark.parametrize("before", ["\n", "\t", "\r", "é", "\x08"])
def test_secret_is_masked_inside_json_encoded_text_after_an_escape(
    secret: Secret, before: str
) -> None:
    """A tool's output or a function call's arguments: JSON text inside a string, where a
    secret on a new line follows the two characters \\ and n (or \\u00e9): a letter or
    digit, which the "not inside a longer word" test used to take for part of a word."""
    inner = json.dumps({"stdout": f"ok{before}{secret.text}"})
    assert "\\" in inner  # the escape is in the text: it is what the test is about
    result = prepare_payload({"role": "tool", "content": inner})
    assert result.redacted_paths == ("/content",)
    assert json.loads(json.loads(result.json_text)["content"]) == {
        "stdout": f"ok{before}{secret.stored}"
    }
    twice = prepare_payload({"arguments": json.dumps({"payload": inner})})
    assert twice.redacted_paths == ("/arguments",)


@pytest.mark.parametrize("secret", SECRETS, ids=lambda s: f"{s.detector}-{s.text[:12]}")
def test_each_detector_alone_finds_its_secret_and_off_keeps_it(secret: Secret) -> None:
    assert text_of(prepare_payload({"t": secret.text}, policy=only(secret.detector))) == (
        secret.stored
    )
    off = prepare_payload({"t": secret.text}, policy=without(secret.detector))
    assert text_of(off) == secret.text
    assert off.redacted_paths == ()


@pytest.mark.parametrize(("detector", "text"), NEAR_MISSES)
def test_near_misses_are_kept(detector: str, text: str) -> None:
    for sample in (text, f"before {text} after"):
        result = prepare_payload({"t": sample})
        assert result.value == {"t": sample}, detector
        assert result.redacted_paths == ()


@pytest.mark.parametrize(("detector", "text"), NEAR_MISSES)
def test_near_misses_next_to_secrets_are_kept(detector: str, text: str) -> None:
    secrets = [secret for secret in SECRETS if secret.detector == detector]
    result = prepare_payload({"t": " ".join([text, *(secret.text for secret in secrets)])})
    assert text_of(result) == " ".join([text, *(secret.stored for secret in secrets)])


def test_several_secrets_in_one_text_are_all_masked_and_the_path_listed_once() -> None:
    key, aws = "sk-ant-api03-" + "k" * 40, "AKIA" + "2" * 16
    url = "mysql://root:" + DB_PASSWORD + "@localhost/db"
    text = f"key={key}\naws={aws}\nurl={url}\nkey again: {key}."
    result = prepare_payload({"messages": [{"role": "user", "content": text}]})
    assert result.value == {
        "messages": [
            {
                "role": "user",
                "content": f"key={REDACTED}\naws={REDACTED}\n"
                f"url=mysql://root:{REDACTED}@localhost/db\nkey again: {REDACTED}.",
            }
        ],
        "_redacted": ["/messages/0/content"],
    }


def test_a_bearer_jwt_is_masked_by_either_detector() -> None:
    header = "Authorization: Bearer " + jwt({"sub": "42"})
    expected = f"Authorization: Bearer {REDACTED}"
    assert text_of(prepare_payload({"t": header})) == expected
    assert text_of(prepare_payload({"t": header}, policy=without("jwt"))) == expected
    assert text_of(prepare_payload({"t": header}, policy=without("bearer_token"))) == expected


def test_detectors_scan_list_items_enum_values_and_str_subclasses() -> None:
    class Note(str):
        pass

    key = "sk-" + "b" * 40
    result = prepare_payload({"t": [Note(f"k {key}"), (f"{key}",)]})
    assert result.value == {"t": [f"k {REDACTED}", [REDACTED]], "_redacted": ["/t/0", "/t/1/0"]}


def test_text_made_from_bytes_uuid_decimal_and_dates_is_not_scanned() -> None:
    # base64 that reads like an AWS key id: masking it would corrupt the stored bytes.
    blob = base64.b64decode("AKIA" + "ABCDEFGHIJKLMNOP" + "////")
    result = prepare_payload({"blob": blob, "id": uuid.UUID(int=7), "amount": Decimal("1.5")})
    assert result.redacted_paths == ()
    assert base64.b64decode(json.loads(result.json_text)["blob"]) == blob
    # The same text as a str is masked.
    as_text = prepare_payload({"blob": base64.b64encode(blob).decode()})
    assert as_text.value == {"blob": f"{REDACTED}////", "_redacted": ["/blob"]}


def test_keys_are_never_masked() -> None:
    key = "sk-" + "c" * 40
    assert prepare_payload({key: 1}).value == {key: 1}


def test_redactor_sees_masked_text_and_the_path_is_listed_once() -> None:
    seen: list[str] = []

    def redactor(path: str, text: str) -> str:
        seen.append(text)
        return text.replace("Alice", "[NAME]")

    text = "Alice pasted sk-" + "d" * 40
    result = prepare_payload({"t": text}, policy=PayloadPolicy(redactor=redactor))
    assert seen == [f"Alice pasted {REDACTED}"]
    assert result.value == {"t": f"[NAME] pasted {REDACTED}", "_redacted": ["/t"]}


def test_all_detectors_off_keeps_values_and_key_redaction() -> None:
    payload = {
        "t": " ".join(secret.text for secret in SECRETS),
        "headers": [["Authorization", "x"]],
        "password": "y",
    }
    result = prepare_payload(payload, policy=NO_DETECTORS)
    assert result.value == {
        "t": payload["t"],
        "headers": [["Authorization", "x"]],
        "password": REDACTED,
        "_redacted": ["/password"],
    }


# --- header pairs ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "Authorization",
        "authorization",
        "Cookie",
        "Set-Cookie",
        "X-Api-Key",
        "Proxy-Authorization",
        "x-goog-api-key",
        "X-Auth-Token",
        "api_keys",
    ],
)
def test_header_pairs_with_secret_names_are_redacted(name: str) -> None:
    payload = {"request": {"headers": [["Accept", "text/plain"], [name, "v4lue"], (name, 7)]}}
    result = prepare_payload(payload)
    assert result.value == {
        "request": {"headers": [["Accept", "text/plain"], [name, REDACTED], [name, REDACTED]]},
        "_redacted": ["/request/headers/1/1", "/request/headers/2/1"],
    }


def test_asgi_raw_header_pairs_with_secret_names_are_redacted() -> None:
    """ASGI's scope["headers"] and httpx's raw headers are (bytes, bytes) pairs: the name
    is kept as bytes are stored (base64), the value withheld (it was stored as base64)."""
    headers = [(b"authorization", b"Bearer " + b"Ab3dEf9h" * 3), (b"host", b"api.example")]
    result = prepare_payload({"scope": {"headers": headers}})
    assert result.value == {
        "scope": {
            "headers": [
                [base64.b64encode(b"authorization").decode(), REDACTED],
                [base64.b64encode(b"host").decode(), base64.b64encode(b"api.example").decode()],
            ]
        },
        "_redacted": ["/scope/headers/0/1"],
    }


def test_header_pair_value_is_redacted_whole_without_being_prepared() -> None:
    class Opaque:
        pass

    result = prepare_payload([["Cookie", {"session": Opaque(), "n": float("nan")}]])
    assert result.value == [["Cookie", REDACTED]]
    assert result.redacted_paths == ("/0/1",)
    assert result.replaced_paths == ()


@pytest.mark.parametrize(
    "value",
    [
        ["Accept", "application/json"],  # not a secret name
        ["Authorization", "x", "y"],  # three items
        ["Authorization"],
        [1, "x"],  # the name is not a str
        {"Authorization", "zz"},  # a set is no pair, even sorted into a list
        ["max_tokens", "1024"],
    ],
)
def test_other_lists_are_not_header_pairs(value: object) -> None:
    result = prepare_payload({"v": value})
    assert result.redacted_paths == ()


def test_header_pairs_follow_redact_keys_and_can_be_switched_off() -> None:
    pairs = [["pin", "1234"], ["Authorization", "x"]]
    custom = prepare_payload(pairs, policy=PayloadPolicy(redact_keys=frozenset({"pin"})))
    assert custom.value == [["pin", REDACTED], ["Authorization", "x"]]
    no_keys = prepare_payload(pairs, policy=PayloadPolicy(redact_keys=frozenset()))
    assert no_keys.value == pairs
    off = prepare_payload(pairs, policy=without("header_pair"))
    assert off.value == [["pin", "1234"], ["Authorization", "x"]]
    assert off.redacted_paths == ()


def test_a_repaired_pair_name_is_recorded_at_its_own_path() -> None:
    result = prepare_payload([["\ud800Cookie", "v"]])
    assert result.value == [["\ufffdCookie", REDACTED]]
    assert result.replaced_paths == ("/0/0",)
    assert result.redacted_paths == ("/0/1",)


def test_a_pair_with_an_ordinary_name_still_gets_its_value_scanned() -> None:
    result = prepare_payload([["X-Trace", "ghp_" + "e" * 36]])
    assert result.value == [["X-Trace", REDACTED]]
    assert result.redacted_paths == ("/0/1",)


def test_redacted_paths_of_every_kind_are_in_document_order() -> None:
    payload = {
        "a": "key sk-" + "f" * 40,
        "password": "x",
        "h": [["Cookie", "c"]],
        "z": ["postgresql://u:" + DB_PASSWORD + "@h/db"],
    }
    result = prepare_payload(payload)
    assert result.redacted_paths == ("/a", "/password", "/h/0/1", "/z/0")


# --- policy ----------------------------------------------------------------------------------


def test_default_detectors_are_the_documented_names() -> None:
    assert {
        "llm_api_key",
        "aws_access_key",
        "git_host_token",
        "slack_token",
        "jwt",
        "bearer_token",
        "url_password",
        "header_pair",
    } == DEFAULT_DETECTORS
    assert PayloadPolicy().detectors == DEFAULT_DETECTORS


def test_detectors_accept_a_set_and_compare_by_value() -> None:
    policy = PayloadPolicy(detectors={"jwt"})  # type: ignore[arg-type]
    assert policy.detectors == frozenset({"jwt"})
    assert isinstance(policy.detectors, frozenset)
    assert policy == only("jwt")
    assert policy != PayloadPolicy()
    assert "detectors=frozenset({'jwt'})" in repr(policy)


@pytest.mark.parametrize("bad", ["jwts", "JWT", "header_pairs", "", 3])
def test_unknown_detector_names_are_refused_with_the_valid_ones(bad: object) -> None:
    with pytest.raises(ConfigurationError) as info:
        PayloadPolicy(detectors=frozenset({"jwt", bad}))  # type: ignore[arg-type]
    message = str(info.value)
    assert f"contains {bad!r}" in message
    for name in DEFAULT_DETECTORS:
        assert repr(name) in message
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("bad", ["jwt", ["jwt"], None, ("jwt",)])
def test_detectors_must_be_a_set(bad: object) -> None:
    with pytest.raises(ConfigurationError, match=re.escape(f"detectors={bad!r}")) as info:
        PayloadPolicy(detectors=bad)  # type: ignore[arg-type]
    assert "DEFAULT_DETECTORS - {'jwt'}" in str(info.value)


# --- properties ------------------------------------------------------------------------------

# Words that cannot touch a secret: no anchor character of any detector, no digits.
_PLAIN_WORDS = st.text(alphabet="abcdefghkmnopqstuvwxyz ,.;!?", max_size=30)


@settings(max_examples=60, deadline=None)
@given(_PLAIN_WORDS, st.sampled_from(SECRETS), _PLAIN_WORDS)
def test_masking_changes_the_secret_and_nothing_around_it(
    before: str, secret: Secret, after: str
) -> None:
    text = f"{before} {secret.text} {after}"
    result = prepare_payload({"t": text})
    assert result.value == {"t": f"{before} {secret.stored} {after}", "_redacted": ["/t"]}


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=60))
def test_any_text_is_kept_or_masked_never_broken(text: str) -> None:
    plain = prepare_payload({"t": text}, policy=NO_DETECTORS)
    result = prepare_payload({"t": text})
    if result.redacted_paths:
        assert REDACTED in text_of(result)
    else:
        assert result == plain


def test_masked_output_prepared_again_is_unchanged_and_not_listed() -> None:
    payload = {"t": " ".join(secret.text for secret in SECRETS), "h": [["Cookie", "c"]]}
    first = prepare_payload(payload, policy=PayloadPolicy(redaction_record_key=None))
    again = prepare_payload(first.value, policy=PayloadPolicy(redaction_record_key=None))
    assert again.value == first.value
    assert first.redacted_paths == ("/t", "/h/0/1")
    # The [REDACTED] already in place is not a new redaction, except for the pair's value.
    assert again.redacted_paths == ("/h/0/1",)


# --- the docs example and the benchmark ------------------------------------------------------


def load(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"loaded_{path.stem}", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_benchmark_runs_at_a_tiny_size(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))  # as `python benchmarks/...` has it
    bench = load(ROOT / "benchmarks" / "redaction_bench.py")
    results = bench.run(6, 1)
    assert set(results) == {"typical payloads, no secret", "same payloads, one secret each"}
    for off, on in results.values():
        assert off > 0
        assert on > 0


def test_docs_example_prints_what_the_docs_show(capsys: pytest.CaptureFixture[str]) -> None:
    load(ROOT / "docs" / "examples" / "writing_redaction.py").main()
    printed = capsys.readouterr().out
    assert printed.count(REDACTED) == 4
    assert "x" * 40 not in printed
    assert "not-a-real-password" not in printed
    assert printed.endswith("('/messages/0/content', '/headers/0/1', '/db_password')\n")
    page = (ROOT / "docs" / "writing.md").read_text()
    assert f"```text\n{printed}```" in page
