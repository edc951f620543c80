"""The public surface keeps its shape.

* Every sync/async twin (``EventLogReader``/``AsyncEventLogReader``, ``BufferedWriter``/
  ``AsyncBufferedWriter``, ``EventFeed``/``AsyncEventFeed``, ``EventTail``/``AsyncEventTail``,
  ``write_events``/``awrite_events``,
  ``feed_status``/``afeed_status``,
  ``EventWriter.record_detached``/``arecord_detached``, and any pair added later) has the same
  parameters, defaults, annotations (up to the sync/async type names) and docstrings, and the
  async side is awaited wherever the sync side does I/O.
* The documentation and examples import only the facade, ``eventlog_persist``, and its topic
  modules (``exceptions``, ``metrics``, ``testing``, ``fastapi``); every name in
  ``__all__`` exists and is documented.
* ``import eventlog_persist`` stays light: Alembic is loaded only when its helpers are used.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import os
import re
import subprocess
import sys
import textwrap
import typing
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import eventlog_persist
import eventlog_persist.exceptions

ROOT = Path(__file__).resolve().parent.parent

# -- sync/async twins ----------------------------------------------------------------------

# Type names that differ between the twins, sync -> async. Only the sync side is mapped, and
# the sync side must not name an async type, so an async twin that takes a sync type (or the
# reverse) is caught.
_ASYNC_TYPE = {
    "Engine": "AsyncEngine",
    "Connection": "AsyncConnection",
    "Session": "AsyncSession",
    "Target": "AsyncTarget",
    "Iterator": "AsyncIterator",
}
_SYNC_TYPE_RE = re.compile(r"\b(" + "|".join(_ASYNC_TYPE) + r")\b")
_ASYNC_TYPE_RE = re.compile(r"\b(" + "|".join(_ASYNC_TYPE.values()) + r")\b")

# Allow-list of intended differences; each entry says why.
#
# Members named differently: the context-manager protocols.
_RENAMED = {
    "__enter__": "__aenter__",  # `with` vs `async with`: same signature, awaited
    "__exit__": "__aexit__",
}
# Async-class members that are not coroutines although they are public.
_NOT_AWAITED = {
    "__init__": "a constructor cannot be awaited; the async writer connects in start()",
    "counters": "a property: a snapshot of in-memory counters, no I/O",
    "stats": "a property: a snapshot of in-memory counters and timings, no I/O",
    "consumer": "a property: the feed's consumer name, no I/O",
    "owner": "a property: the feed's lease owner name, no I/O",
    "parts": "a property: how many parts the feed's consumer is split into, no I/O",
    "follow": "checks its arguments at the call and returns the iterator `async for` "
    "takes, as its twin returns the iterator `for` takes",
}
# Parameters only one twin has: (class, member) -> {parameter: reason}.
_SYNC_ONLY_PARAMETERS = {
    ("BufferedWriter", "__init__"): {
        "exit_timeout": "only the thread writer registers an atexit hook; the asyncio "
        "writer's loop is gone at exit, so the host closes it in its lifespan",
        "handle_sigterm": "the asyncio writer is closed by the ASGI server's lifespan "
        "shutdown, which the server runs on SIGTERM",
    },
    ("EventTail", "follow"): {
        "stop": "an async iteration ends when the caller leaves the `async for` or its task "
        "is cancelled; a blocked thread has no such way out",
    },
}
# Protocol methods are documented in the class docstring, not their own.
_UNDOCUMENTED_OK = frozenset({"__init__", *_RENAMED, *_RENAMED.values()})


def _public() -> dict[str, Any]:
    return {name: getattr(eventlog_persist, name) for name in eventlog_persist.__all__}


def _class_pairs() -> list[tuple[type, type]]:
    """``X`` / ``AsyncX`` classes of ``__all__``."""
    public = _public()
    return [
        (public[name[len("Async") :]], obj)
        for name, obj in sorted(public.items())
        if inspect.isclass(obj) and name.startswith("Async") and name[len("Async") :] in public
    ]


def _function_pairs() -> list[tuple[Callable[..., Any], Callable[..., Any]]]:
    """``x`` / ``ax`` functions of ``__all__``, and ``x`` / ``ax`` methods of public classes."""
    pairs: list[tuple[Callable[..., Any], Callable[..., Any]]] = []
    public = _public()
    for name, obj in sorted(public.items()):
        if inspect.iscoroutinefunction(obj) and name[1:] in public:
            pairs.append((public[name[1:]], obj))
        if inspect.isclass(obj):
            members = vars(obj)
            pairs.extend(
                (members[attr[1:]], member)
                for attr, member in sorted(members.items())
                if inspect.iscoroutinefunction(member) and attr[1:] in members
            )
    return pairs


def _members(cls: type) -> dict[str, Any]:
    """Public methods and properties, and the protocol methods the class defines itself."""
    names = {name for name in dir(cls) if not name.startswith("_")}
    names |= {
        name
        for name, value in vars(cls).items()
        if name.startswith("__") and name.endswith("__") and inspect.isfunction(value)
    }
    return {name: inspect.getattr_static(cls, name) for name in sorted(names)}


def _member_pairs() -> list[tuple[type, type, str, str]]:
    pairs = []
    for sync_cls, async_cls in _class_pairs():
        sync_members = _members(sync_cls)
        pairs.extend((sync_cls, async_cls, name, _RENAMED.get(name, name)) for name in sync_members)
    return pairs


def _shape(function: Callable[..., Any], *, sync: bool) -> list[tuple[str, str, object, str]]:
    """The signature as comparable tuples; sync type names are mapped to the async ones."""
    signature = inspect.signature(function)
    rows: list[tuple[str, str, object, str]] = []
    for parameter in [*signature.parameters.values(), None]:
        if parameter is None:
            name, kind, default = "return", "", None
            annotation = signature.return_annotation
        else:
            name, kind, default = parameter.name, parameter.kind.name, parameter.default
            annotation = parameter.annotation
        text = annotation if isinstance(annotation, str) else inspect.formatannotation(annotation)
        if sync:
            assert not _ASYNC_TYPE_RE.search(text), f"{function.__qualname__}: {name}: {text}"
            text = _SYNC_TYPE_RE.sub(lambda match: _ASYNC_TYPE[match[1]], text)
        rows.append((name, kind, default, text))
    return rows


def _assert_twin_signatures(
    sync: Callable[..., Any],
    async_: Callable[..., Any],
    sync_only: dict[str, str] | None = None,
) -> None:
    sync_shape = [row for row in _shape(sync, sync=True) if row[0] not in (sync_only or {})]
    assert sync_shape == _shape(async_, sync=False), (sync.__qualname__, async_.__qualname__)
    sync_overloads = typing.get_overloads(sync)
    async_overloads = typing.get_overloads(async_)
    assert len(sync_overloads) == len(async_overloads), sync.__qualname__
    for sync_overload, async_overload in zip(sync_overloads, async_overloads, strict=True):
        assert _shape(sync_overload, sync=True) == _shape(async_overload, sync=False)
        assert not inspect.iscoroutinefunction(sync_overload)
        assert inspect.iscoroutinefunction(async_overload), async_overload.__qualname__


def _params(pairs: list[tuple[Any, ...]]) -> list[Any]:
    """Pytest parameters named after the pair: ``BufferedWriter.close/close``."""
    return [
        pytest.param(*pair, id="/".join(getattr(item, "__qualname__", item) for item in pair))
        for pair in pairs
    ]


def test_twins_are_found() -> None:
    """Discovery finds the known pairs, and every async name of the facade has its twin."""
    classes = {(a.__name__, b.__name__) for a, b in _class_pairs()}
    assert classes == {
        ("AuditSealer", "AsyncAuditSealer"),
        ("BufferedWriter", "AsyncBufferedWriter"),
        ("EventFeed", "AsyncEventFeed"),
        ("EventLogReader", "AsyncEventLogReader"),
        ("EventTail", "AsyncEventTail"),
    }
    functions = {(a.__qualname__, b.__qualname__) for a, b in _function_pairs()}
    assert functions >= {
        ("write_events", "awrite_events"),
        ("feed_status", "afeed_status"),
        ("EventWriter.record_detached", "EventWriter.arecord_detached"),
    }
    for name, obj in _public().items():
        if inspect.isclass(obj) and name.startswith("Async"):
            assert name[len("Async") :] in eventlog_persist.__all__, name
        elif inspect.iscoroutinefunction(obj):
            assert name[1:] in eventlog_persist.__all__, name


@pytest.mark.parametrize(("sync_cls", "async_cls"), _params(_class_pairs()))
def test_twin_classes_have_the_same_members(sync_cls: type, async_cls: type) -> None:
    sync_names = {_RENAMED.get(name, name) for name in _members(sync_cls)}
    assert sync_names == set(_members(async_cls))
    assert sync_cls.__doc__
    assert async_cls.__doc__
    # Generic twins take the same type parameters (a class that is not generic has none).
    assert getattr(sync_cls, "__parameters__", ()) == getattr(async_cls, "__parameters__", ())


@pytest.mark.parametrize(
    ("sync_cls", "async_cls", "sync_name", "async_name"), _params(_member_pairs())
)
def test_twin_members_agree(
    sync_cls: type, async_cls: type, sync_name: str, async_name: str
) -> None:
    sync = inspect.getattr_static(sync_cls, sync_name)
    async_ = inspect.getattr_static(async_cls, async_name)
    assert type(sync) is type(async_)
    if sync_name not in _UNDOCUMENTED_OK:
        assert sync.__doc__, f"{sync_cls.__name__}.{sync_name} has no docstring"
        assert async_.__doc__, f"{async_cls.__name__}.{async_name} has no docstring"
    if isinstance(sync, property):
        assert sync_name in _NOT_AWAITED, f"new property {sync_name}: add it to _NOT_AWAITED"
        assert (sync.fset, sync.fdel) == (None, None) == (async_.fset, async_.fdel)
        _assert_twin_signatures(sync.fget, async_.fget)
        return
    sync_only = _SYNC_ONLY_PARAMETERS.get((sync_cls.__name__, sync_name), {})
    for parameter in sync_only:
        assert parameter in inspect.signature(sync).parameters, (sync_name, parameter)
    _assert_twin_signatures(sync, async_, sync_only)
    assert not inspect.iscoroutinefunction(sync)
    if inspect.isasyncgenfunction(async_):  # iterated with `async for`: a generator's twin
        assert inspect.isgeneratorfunction(sync), f"{sync_cls.__name__}.{sync_name}"
        return
    awaited = sync_name not in _NOT_AWAITED
    assert inspect.iscoroutinefunction(async_) is awaited, f"{async_cls.__name__}.{async_name}"


@pytest.mark.parametrize(("sync", "async_"), _params(_function_pairs()))
def test_twin_functions_agree(sync: Callable[..., Any], async_: Callable[..., Any]) -> None:
    _assert_twin_signatures(sync, async_)
    assert sync.__doc__
    assert async_.__doc__
    assert not inspect.iscoroutinefunction(sync)
    assert inspect.iscoroutinefunction(async_)


def test_twin_targets_agree() -> None:
    """``Target`` and ``AsyncTarget``, mapped onto each other above, are twins themselves."""
    from eventlog_persist._delivery import AsyncTarget, Target

    def names(alias: object) -> list[str]:
        return [(typing.get_origin(arg) or arg).__name__ for arg in typing.get_args(alias)]

    expected = [
        f"Async{name}" if name in {"Engine", "Connection"} else name for name in names(Target)
    ]
    assert names(AsyncTarget) == expected


# -- the facade is enough ------------------------------------------------------------------

_DOC_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("**/*.md"))]
_EXAMPLE_DIRS = [ROOT / "docs" / "examples", ROOT / "examples"]
_FENCE = re.compile(r"^([ \t]*)```python[ \t]*\n(.*?)^[ \t]*```", flags=re.M | re.S)
_PUBLIC_MODULES = {
    "eventlog_persist.exceptions",
    "eventlog_persist.fastapi",
    "eventlog_persist.metrics",
    "eventlog_persist.testing",
}


def _example_files() -> Iterator[Path]:
    for folder in _EXAMPLE_DIRS:
        for path in sorted(folder.rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts:
                yield path


def _python_sources() -> list[tuple[str, str]]:
    """(where, code) of every Python block of the docs and every example Python file."""
    sources = []
    for path in [*_DOC_FILES, *(p for p in _example_files() if p.suffix == ".md")]:
        for number, match in enumerate(_FENCE.finditer(path.read_text()), 1):
            code = textwrap.dedent(match[2])
            sources.append((f"{path.relative_to(ROOT)} block {number}", code))
    sources.extend(
        (str(path.relative_to(ROOT)), path.read_text())
        for path in _example_files()
        if path.suffix == ".py"
    )
    return sources


def _facade_uses(code: str) -> Iterator[tuple[int, str]]:
    """(line, what) for each import from the package and each ``eventlog_persist.x`` use."""
    tree = ast.parse(code)
    aliases = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == "eventlog_persist" or alias.name.startswith("eventlog_persist."):
                    yield node.lineno, f"import {alias.name}"
                    if alias.name == "eventlog_persist" or alias.asname is None:
                        aliases.add(alias.asname or "eventlog_persist")
        elif (
            isinstance(node, ast.ImportFrom)
            and node.level == 0
            and node.module is not None
            and node.module.split(".")[0] == "eventlog_persist"
        ):
            for alias in node.names:
                yield node.lineno, f"from {node.module} import {alias.name}"
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in aliases
        ):
            yield node.lineno, f"eventlog_persist.{node.attr}"


def _check_use(what: str) -> str | None:
    """Why ``what`` is not allowed, or None."""
    public = set(eventlog_persist.__all__)
    if what.startswith("import "):
        module = what.removeprefix("import ")
        if module != "eventlog_persist" and module not in _PUBLIC_MODULES:
            return "imports a private or unknown module"
    elif what.startswith("from "):
        module, name = what.removeprefix("from ").split(" import ")
        if module == "eventlog_persist":
            # `from eventlog_persist import exceptions` names the public topic module.
            if name not in public and f"{module}.{name}" not in _PUBLIC_MODULES:
                return "imports a name that is not in eventlog_persist.__all__"
        elif module not in _PUBLIC_MODULES:
            return "imports from a private or unknown module"
        elif name not in importlib.import_module(module).__all__:
            return f"imports a name that is not in {module}.__all__"
    else:
        name = what.removeprefix("eventlog_persist.")
        if name not in public and what not in _PUBLIC_MODULES and name != "__version__":
            return "uses an attribute that is not in eventlog_persist.__all__"
    return None


def test_docs_and_examples_import_only_the_facade() -> None:
    sources = _python_sources()
    assert len(sources) > 10, [where for where, _ in sources]
    uses = 0
    problems = []
    for where, code in sources:
        for line, what in _facade_uses(code):
            uses += 1
            why = _check_use(what)
            if why is not None:
                problems.append(f"{where}, line {line}: {what}: {why}")
    assert not problems, "\n".join(problems)
    assert uses > 10  # the check saw the docs' imports


def test_no_private_module_named_in_docs() -> None:
    """Prose, templates and config too: ``eventlog_persist._x`` is never mentioned."""
    texts = [*_DOC_FILES, *_example_files()]
    # `eventlog_persist.<key>=<value>` is an `alembic -x` option, not a module: skipped.
    dotted = re.compile(r"\beventlog_persist\.(\w+)(?![\w=])")
    problems = [
        f"{path.relative_to(ROOT)}: {match[0]}"
        for path in texts
        for match in dotted.finditer(path.read_text())
        if match[1] not in eventlog_persist.__all__
        and f"eventlog_persist.{match[1]}" not in _PUBLIC_MODULES
    ]
    assert not problems, "\n".join(problems)


def test_check_use_catches_leaks() -> None:
    code = textwrap.dedent(
        """
        import eventlog_persist._writer
        import eventlog_persist as ep
        from eventlog_persist._reader import EventLogReader
        from eventlog_persist import EventBuilder, EventWriter
        from eventlog_persist.exceptions import NotAnError
        ep.new_event_id()
        ep._model
        """
    )
    verdicts = {what: _check_use(what) is None for _, what in _facade_uses(code)}
    assert verdicts == {
        "import eventlog_persist._writer": False,
        "import eventlog_persist": True,
        "from eventlog_persist._reader import EventLogReader": False,
        "from eventlog_persist import EventBuilder": False,
        "from eventlog_persist import EventWriter": True,
        "from eventlog_persist.exceptions import NotAnError": False,
        "eventlog_persist.new_event_id": True,
        "eventlog_persist._model": False,
    }


def test_all_is_public_importable_and_documented() -> None:
    names = eventlog_persist.__all__
    assert len(names) == len(set(names))
    assert not [name for name in names if name.startswith("_")]
    undocumented = []
    for name in names:
        obj = getattr(eventlog_persist, name)  # raises if the name does not resolve
        namespace: dict[str, object] = {}
        exec(f"from eventlog_persist import {name}", namespace)
        assert namespace[name] is obj
        if inspect.isclass(obj):
            doc = vars(obj).get("__doc__")  # not inherited
            # A dataclass without a docstring gets its signature as __doc__.
            if not doc or doc.startswith(f"{obj.__name__}("):
                undocumented.append(name)
        elif inspect.isfunction(obj) and not obj.__doc__:
            undocumented.append(name)
    assert not undocumented
    exceptions = eventlog_persist.exceptions
    assert not [name for name in exceptions.__all__ if name.startswith("_")]
    assert all(vars(getattr(exceptions, name)).get("__doc__") for name in exceptions.__all__)
    metrics = importlib.import_module("eventlog_persist.metrics")
    for name in metrics.__all__:
        obj = getattr(metrics, name)
        if inspect.isclass(obj) or inspect.isfunction(obj):
            assert vars(obj).get("__doc__") or obj.__doc__, name


def test_unknown_attribute_raises() -> None:
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        eventlog_persist.nope  # noqa: B018


# -- light import --------------------------------------------------------------------------


def _python(*args: str) -> subprocess.CompletedProcess[str]:
    """Run this interpreter on the checkout under test, whatever is installed."""
    source = str(Path(eventlog_persist.__file__).resolve().parent.parent)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([source, os.environ.get("PYTHONPATH", "")])}
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, env=env, timeout=60, check=False
    )


_LIGHT_IMPORT = """
import sys
import eventlog_persist
loaded = sorted(name for name in sys.modules if name.split(".")[0] == "alembic")
assert not loaded, loaded
check = eventlog_persist.check_setup
assert "alembic" in sys.modules
from eventlog_persist import check_setup
from eventlog_persist._alembic_setup import check_setup as original
assert check is check_setup is original and callable(check), check
print(eventlog_persist.__file__)
"""


def test_import_does_not_load_alembic() -> None:
    result = _python("-c", _LIGHT_IMPORT)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == eventlog_persist.__file__


def test_module_help_runs() -> None:
    result = _python("-m", "eventlog_persist", "--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: eventlog-persist")
