"""OpenTelemetry GenAI semantic conventions in a payload: `genai_payload` and its key names."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

from eventlog_persist._vocabulary import forbidden_character
from eventlog_persist.exceptions import ValidationError

__all__ = [
    "CONVERSATION_ID",
    "INPUT_TOKENS",
    "OPERATION_NAME",
    "OUTPUT_TOKENS",
    "PROVIDER_NAME",
    "REQUEST_MODEL",
    "RESPONSE_MODEL",
    "TOOL_CALL_ID",
    "genai_payload",
]

# The attribute names of the OpenTelemetry GenAI semantic conventions, spelled as the
# conventions spell them (checked against opentelemetry-semantic-conventions by the tests).
OPERATION_NAME: Final = "gen_ai.operation.name"
REQUEST_MODEL: Final = "gen_ai.request.model"
RESPONSE_MODEL: Final = "gen_ai.response.model"
PROVIDER_NAME: Final = "gen_ai.provider.name"
INPUT_TOKENS: Final = "gen_ai.usage.input_tokens"
OUTPUT_TOKENS: Final = "gen_ai.usage.output_tokens"
TOOL_CALL_ID: Final = "gen_ai.tool.call.id"
CONVERSATION_ID: Final = "gen_ai.conversation.id"


def genai_payload(
    payload: Mapping[str, object] | None = None,
    /,
    *,
    request_model: str | None = None,
    response_model: str | None = None,
    provider: str | None = None,
    input_tokens: int | None = None,
    output_tokens: int | None = None,
    tool_call_id: str | None = None,
    conversation_id: str | None = None,
    operation_name: str | None = None,
) -> dict[str, object]:
    """Return ``payload`` with the OpenTelemetry GenAI attributes added under their own names.

    Each given value is stored under the conventions' attribute name, as a flat dotted key
    (``{"gen_ai.request.model": "gpt-4o", "gen_ai.usage.input_tokens": 12}``), next to the
    host's own keys; a value left as ``None`` adds no key. The operation itself goes in
    ``event_type`` (`EventType.CHAT`, ``EXECUTE_TOOL``, ...), not here. Token counts stored
    this way are what `EventLogReader.token_usage` adds up.

    Args:
        payload: The host's own keys; copied, never changed. Other ``gen_ai.*`` attributes
            (``gen_ai.request.temperature``, say) may be given here too.
        request_model: ``gen_ai.request.model``: the model the request asked for.
        response_model: ``gen_ai.response.model``: the model that answered.
        provider: ``gen_ai.provider.name``, e.g. ``"openai"``, ``"anthropic"``,
            ``"aws.bedrock"``.
        input_tokens: ``gen_ai.usage.input_tokens``: tokens of the prompt, an int >= 0.
        output_tokens: ``gen_ai.usage.output_tokens``: tokens of the response, an int >= 0.
        tool_call_id: ``gen_ai.tool.call.id``: the id the model gave the tool call.
        conversation_id: ``gen_ai.conversation.id``: the provider's or framework's id of
            the conversation (thread), when it is not the event's ``session_id``.
        operation_name: ``gen_ai.operation.name``, only for an event whose ``event_type``
            is not the operation's name itself (a custom type such as ``"myapp.summary"``
            that is a ``"chat"``); `EventType.CHAT` and its kin say it already.

    Returns:
        A new dict: the host's keys and the GenAI keys, ready for ``payload=``.

    Raises:
        ValidationError: A count is not an int >= 0 (a bool, a float or a str is refused),
            a name is not a non-empty str on one line without surrounding whitespace,
            ``payload`` is not a mapping, or ``payload`` holds a key given as an argument too.

    Example:
        >>> genai_payload({"prompt_chars": 120}, request_model="gpt-4o", input_tokens=12)
        {'prompt_chars': 120, 'gen_ai.request.model': 'gpt-4o', 'gen_ai.usage.input_tokens': 12}

    .. versionadded:: 0.3.0
    """
    if payload is not None and not isinstance(payload, Mapping):
        raise ValidationError(
            f"genai_payload() takes the host's own keys as a mapping (a dict), got "
            f"{type(payload).__name__} {payload!r}; pass e.g. {{'prompt_chars': 120}}, or "
            "nothing"
        )
    names: dict[str, tuple[str, object]] = {
        REQUEST_MODEL: ("request_model", request_model),
        RESPONSE_MODEL: ("response_model", response_model),
        PROVIDER_NAME: ("provider", provider),
        TOOL_CALL_ID: ("tool_call_id", tool_call_id),
        CONVERSATION_ID: ("conversation_id", conversation_id),
        OPERATION_NAME: ("operation_name", operation_name),
    }
    counts: dict[str, tuple[str, object]] = {
        INPUT_TOKENS: ("input_tokens", input_tokens),
        OUTPUT_TOKENS: ("output_tokens", output_tokens),
    }
    added: dict[str, object] = {}
    for key, (argument, value) in names.items():
        if value is not None:
            added[key] = _name(argument, value)
    for key, (argument, value) in counts.items():
        if value is not None:
            added[key] = _count(argument, value)
    result = dict(payload or {})
    twice = sorted(key for key in added if key in result)
    if twice:
        arguments = {key: argument for key, (argument, _) in (names | counts).items()}
        raise ValidationError(
            f"genai_payload() got {twice[0]!r} twice: in the payload mapping and as "
            f"{arguments[twice[0]]}=...; keep one of them"
        )
    result.update(added)
    return result


def _name(argument: str, value: object) -> str:
    if not isinstance(value, str):
        raise ValidationError(
            f"genai_payload({argument}=...) must be a str or None, got "
            f"{type(value).__name__} {value!r}"
        )
    if not value:
        raise ValidationError(
            f"genai_payload({argument}='') is empty; pass the name, or None to leave the "
            "attribute out"
        )
    if value != value.strip():
        raise ValidationError(
            f"genai_payload({argument}={value!r}) has leading or trailing whitespace, which "
            "would make it a different name when grouped on; strip it"
        )
    problem = forbidden_character(f"genai_payload({argument}=...)", value)
    if problem is not None:
        raise ValidationError(problem)
    return str.__str__(value)  # its text: a `(str, Enum)` member's value, not its str()


def _count(argument: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        fix = "; convert it with int(...)" if isinstance(value, (str, float)) else ""
        raise ValidationError(
            f"genai_payload({argument}=...) must be an int >= 0 (a token count) or None, got "
            f"{type(value).__name__} {value!r}{fix}"
        )
    if value < 0:
        raise ValidationError(
            f"genai_payload({argument}={value}) is negative; a token count is an int >= 0, "
            "as the provider's usage reports it"
        )
    return int(value)
