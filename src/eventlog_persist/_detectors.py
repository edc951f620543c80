"""Value detectors: find secret-shaped text (API keys, tokens, URL passwords) and mask it."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, TypeAlias

__all__ = ["DEFAULT_DETECTORS", "HEADER_PAIR", "REDACTED", "SecretMasker", "masker"]

REDACTED: Final = "[REDACTED]"
"""What a redacted value is stored as; a secret found inside text is replaced by it in place."""

HEADER_PAIR: Final = "header_pair"
"""The structural detector: the value of a ``[name, value]`` pair whose name is a secret key."""

_Replace: TypeAlias = str | Callable[[re.Match[str]], str]


@dataclass(frozen=True, slots=True)
class _Shape:
    """One secret shape, and the cheap tests that rule it out in ordinary text.

    Every match contains ``anchor``, one character: ``in`` finds or rules it out with memchr,
    many times faster than any longer search. ``probe`` (regex source) then looks for the
    shape's start: a plain literal is searched with ``in``, the fastest search for one;
    otherwise it opens with ``anchor`` and checks what precedes it with lookbehinds, which
    the regex engine scans for quickly and which, unlike a substring, do not fire on
    look-alikes such as the "sk-" in "risk-free". The probes of the shapes sharing an anchor
    run as one regex. ``pattern`` finds and masks the secrets only in text that passed both
    tests; it opens with a literal too, for the same fast scan, and checks the "not inside a
    longer word" boundary as a lookbehind after it. ``min_length`` is the length of the
    shortest match. ``loose`` is ``probe`` without the boundary check: it finds the shape's
    literal start wherever it is, so it also holds in a whole JSON document, where an escape
    sequence (``\\n``) may end with a letter right before a secret.
    """

    anchor: str
    probe: str
    min_length: int
    pattern: re.Pattern[str]
    replace: _Replace
    loose: str


def _starts(word: str, literal: str) -> str:
    """Regex: ``literal`` (fixed width, just matched) starts a word: no ``word`` character
    before it, or an escape sequence that ends with a letter or digit (``\\n``, ``\\t``,
    ``\\u00e9``): in JSON-encoded text inside a string (a tool's output, a function call's
    arguments) a secret on a new line follows the two characters ``\\`` and ``n``."""
    return f"(?:(?<!{word}{literal})|(?<=\\\\[nrtbf]{literal})|(?<=\\\\u[0-9A-Fa-f]{{4}}{literal}))"


def _mask_bearer(match: re.Match[str]) -> str:
    """Mask a credential that looks generated: 8+ characters with a digit, or with a capital
    or no letter at all after the first, so that prose such as "Bearer authentication" is
    kept."""
    credential = match[3]
    if len(credential) >= 8 and (
        any(char.isdigit() for char in credential) or not credential[1:].islower()
    ):
        return f"{match[1]}{match[2]}{REDACTED}"
    return match[0]


def _mask_url_password(match: re.Match[str]) -> str:
    return f"{match[1]}{REDACTED}@"


# OpenAI (sk-..., sk-proj-..., sk-svcacct-..., sk-admin-..., sk-None-...) and Anthropic
# (sk-ant-...) keys. The bare sk- form needs 32 letters and digits in one run, so that a slug
# such as "sk-learn-pipeline" is not taken for a key.
_LLM_API_KEY: Final = _Shape(
    "-",
    r"-(?<=sk-)" + _starts("[A-Za-z0-9_-]", "sk-"),
    27,
    re.compile(
        r"sk-"
        + _starts("[A-Za-z0-9_-]", "sk-")
        + r"(?:(?:proj|ant|svcacct|admin|None)-[A-Za-z0-9_-]{20,}|[A-Za-z0-9]{32,})"
    ),
    REDACTED,
    r"-(?<=sk-)",
)
# AWS access key ids: long-term (AKIA) and temporary (ASIA), then 16 upper-case letters or
# digits, and no more.
_AWS_ACCESS_KEY: Final = _Shape(
    "I",
    r"IA(?<=A[KS]IA)" + _starts("[A-Za-z0-9]", "A[KS]IA"),
    20,
    re.compile(r"A" + _starts("[A-Za-z0-9]", "A") + r"[KS]IA[A-Z0-9]{16}(?![A-Za-z0-9])"),
    REDACTED,
    r"IA(?<=A[KS]IA)",
)
# GitHub classic tokens (ghp_ personal, gho_ OAuth, ghu_ user-to-server, ghs_ server-to-server,
# ghr_ refresh) and fine-grained ones (github_pat_).
_GITHUB_TOKEN: Final = _Shape(
    "_",
    r"_(?<=gh[pousr]_)"
    + _starts("[A-Za-z0-9_]", "gh[pousr]_")
    + r"|_(?<=github_pat_)"
    + _starts("[A-Za-z0-9_]", "github_pat_"),
    33,
    re.compile(
        r"g"
        + _starts("[A-Za-z0-9_]", "g")
        + r"(?:h[pousr]_[A-Za-z0-9]{36,}|ithub_pat_[A-Za-z0-9_]{22,})"
    ),
    REDACTED,
    r"_(?<=gh[pousr]_)|_(?<=github_pat_)",
)
# GitLab personal access tokens.
_GITLAB_TOKEN: Final = _Shape(
    "-",
    r"-(?<=glpat-)" + _starts("[A-Za-z0-9_-]", "glpat-"),
    26,
    re.compile(r"glpat-" + _starts("[A-Za-z0-9_-]", "glpat-") + r"[A-Za-z0-9_-]{20,}"),
    REDACTED,
    r"-(?<=glpat-)",
)
# Slack bot, user, app-level, refresh and configuration tokens.
_SLACK_TOKEN: Final = _Shape(
    "-",
    r"-(?<=xox[abprs]-)" + _starts("[A-Za-z0-9]", "xox[abprs]-"),
    15,
    re.compile(r"xox" + _starts("[A-Za-z0-9]", "xox") + r"[abprs]-[A-Za-z0-9-]{10,}"),
    REDACTED,
    r"-(?<=xox[abprs]-)",
)
# A JSON Web Token: two base64url JSON objects ('{"' encodes as "eyJ") and a signature,
# empty in unsigned tokens.
_JWT: Final = _Shape(
    "J",
    r"J(?<=eyJ)" + _starts("[A-Za-z0-9_-]", "eyJ"),
    10,
    re.compile(
        r"eyJ"
        + _starts("[A-Za-z0-9_-]", "eyJ")
        + r"[A-Za-z0-9_-]+\.eyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*"
    ),
    REDACTED,
    r"J(?<=eyJ)",
)
# "Bearer <token68>" (RFC 6750), spelled Bearer or bearer; _mask_bearer decides.
_BEARER: Final = _Shape(
    "",
    "earer",
    15,
    re.compile(
        r"([Bb]earer)"
        + _starts("[A-Za-z0-9]", "[Bb]earer")
        # A tab in JSON-encoded text is a backslash and a "t" (more backslashes when twice).
        + r"((?:[ \t]|\\+t)+)([A-Za-z0-9._~+/-]*[A-Za-z0-9_~+/-]=*)"
    ),
    _mask_bearer,
    "earer",
)
# scheme://user:password@host: only the password is masked. The user may be empty
# (redis://:pw@host); the password runs to the last "@" before the path.
_URL_PASSWORD: Final = _Shape(
    "@",
    "://",
    7,
    re.compile(r"(://(?<=[A-Za-z0-9+.-]://)[^\s:/?#@]*:)[^\s/?#]*[^\s/?#@]@"),
    _mask_url_password,
    "://",
)

_SHAPES: Final[dict[str, tuple[_Shape, ...]]] = {
    "llm_api_key": (_LLM_API_KEY,),
    "aws_access_key": (_AWS_ACCESS_KEY,),
    "git_host_token": (_GITHUB_TOKEN, _GITLAB_TOKEN),
    "slack_token": (_SLACK_TOKEN,),
    "jwt": (_JWT,),
    "bearer_token": (_BEARER,),
    "url_password": (_URL_PASSWORD,),
}

DEFAULT_DETECTORS: Final = frozenset({*_SHAPES, HEADER_PAIR})
"""Names of every detector, all on by default; see `PayloadPolicy.detectors`."""

_Probe: TypeAlias = Callable[[str], object]
_Group: TypeAlias = tuple[str, int, _Probe, tuple[tuple[re.Pattern[str], _Replace], ...]]


def _probe(sources: list[str]) -> _Probe:
    """``in`` for a single literal, else one regex search for any of ``sources``."""
    if len(sources) == 1 and re.escape(sources[0]) == sources[0]:
        needle = sources[0]

        def contains(text: str) -> bool:
            return needle in text

        return contains
    return re.compile("|".join(sources)).search


class SecretMasker:
    """Masks what the chosen detectors find in a string; built once per policy."""

    __slots__ = ("_groups", "_loose", "min_length")

    def __init__(self, shapes: tuple[_Shape, ...]) -> None:
        # Strings shorter than this hold nothing any chosen detector finds.
        self.min_length: int = min(shape.min_length for shape in shapes)
        anchors: dict[str, list[_Shape]] = {}
        for shape in shapes:
            anchors.setdefault(shape.anchor, []).append(shape)
        # Shapes that share an anchor share its test, one probe, and the shortest length.
        self._groups: tuple[_Group, ...] = tuple(
            (
                anchor,
                min(shape.min_length for shape in members),
                _probe([shape.probe for shape in members]),
                tuple({shape.pattern: shape.replace for shape in members}.items()),
            )
            for anchor, members in anchors.items()
        )
        self._loose: tuple[tuple[str, _Probe], ...] = tuple(
            (anchor, _probe([shape.loose for shape in members]))
            for anchor, members in anchors.items()
        )

    def __call__(self, text: str) -> str:
        """Return ``text`` itself when nothing is found, else a copy with every secret masked."""
        size = len(text)
        for anchor, min_length, probe, patterns in self._groups:
            if size >= min_length and anchor in text and probe(text):
                for pattern, replace in patterns:
                    text = pattern.sub(replace, text)
        return text

    def may_find_in(self, document: str) -> bool:
        """Whether a string inside the JSON ``document`` might hold a secret; False is sure.

        Every secret a detector masks starts with a literal made of letters, digits and
        ``-_:/``, which JSON never escapes, so the literal shows in the document as it does
        in the string. The test looks for those literals only, without the boundary checks,
        which an escape sequence before the literal (``\\n``) would fool.
        """
        for anchor, loose in self._loose:  # noqa: SIM110 - any() over a generator is slower
            if anchor in document and loose(document):
                return True
        return False


def masker(names: frozenset[str]) -> SecretMasker | None:
    """The masker for the value detectors among ``names``; None when there are none."""
    shapes = tuple(shape for name, group in _SHAPES.items() if name in names for shape in group)
    return SecretMasker(shapes) if shapes else None
