"""Griffe extension for the docs site: a `msgspec.Struct` gets the signature it has at runtime.

Griffe reads the source without running it, and a Struct defines no ``__init__`` there: msgspec
makes one from the annotated fields when the class is created. Without this, the reference
page shows a Struct's attributes but no way to build it. This adds that ``__init__``: the
fields in order, with their annotations and defaults, keyword-only where the class says
``kw_only=True``. Loaded by ``mkdocs.yml``.
"""

from __future__ import annotations

from typing import Any

from griffe import Attribute, Class, Expr, Extension, Function, Parameter, ParameterKind, Parameters

_STRUCT = "msgspec.Struct"


def _is_struct(cls: Class) -> bool:
    return any(isinstance(base, Expr) and base.canonical_path == _STRUCT for base in cls.bases)


def _fields(cls: Class) -> list[Attribute]:
    return [
        member
        for member in cls.members.values()
        if isinstance(member, Attribute)
        and member.annotation is not None
        and "property" not in member.labels
        and not ("class-attribute" in member.labels and "instance-attribute" not in member.labels)
    ]


class StructSignatures(Extension):
    """Give each class based on `msgspec.Struct` the ``__init__`` msgspec makes for it."""

    def on_class_members(self, *, cls: Class, **kwargs: Any) -> None:
        if "__init__" in cls.members or not _is_struct(cls):
            return
        keyword_only = str(cls.keywords.get("kw_only")) == "True"
        kind = ParameterKind.keyword_only if keyword_only else ParameterKind.positional_or_keyword
        parameters = [
            Parameter(
                field.name,
                annotation=field.annotation,
                kind=kind,
                default=field.value,
                docstring=field.docstring,
            )
            for field in _fields(cls)
        ]
        init = Function(
            "__init__",
            lineno=0,
            endlineno=0,
            parent=cls,
            parameters=Parameters(
                Parameter("self", kind=ParameterKind.positional_or_keyword), *parameters
            ),
            returns="None",
        )
        cls.set_member("__init__", init)
