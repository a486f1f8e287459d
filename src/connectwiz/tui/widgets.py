"""Widget helpers shared by the steps and dialogs."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rich.text import Text
from textual.binding import Binding
from textual.dom import DOMNode
from textual.screen import Screen
from textual.widgets import DataTable, Input, TextArea

Cells = tuple[str | Text, ...]


def no_blink(screen: Screen[Any]) -> None:
    """Snapshot runs turn the cursor blink off (``App.blink``) so every picture is the same."""
    if not getattr(screen.app, "blink", True):
        for widget in screen.query(Input):
            widget.cursor_blink = False
        for area in screen.query(TextArea):
            area.cursor_blink = False


def key_of(node: DOMNode, binding_id: str) -> str:
    """The key of binding ``binding_id`` as the footer shows it (its first key), looked up on
    ``node``'s class, then on the screens below it: hints built with it name the real key."""
    owners: list[DOMNode] = [node, *reversed(node.app.screen_stack), node.app]
    for owner in owners:
        for binding in Binding.make_bindings(type(owner).BINDINGS):
            if binding.id == binding_id:
                return node.app.get_key_display(binding)
    raise KeyError(f"no binding {binding_id!r} for {type(node).__name__}")


def sync_rows(table: DataTable[str | Text], columns: Sequence[str],
              rows: Sequence[tuple[str, Cells]], shown: dict[str, Cells]) -> None:
    """Make ``table`` show ``rows`` (key, cells), touching only what changed.

    ``shown`` holds the rows as last drawn and is kept up to date. Removed rows go, rows
    added at the end are appended; any other reordering redraws the table. Filling a
    DataTable measures every cell (about half a millisecond a row), so a list of 10,000
    domains must not be rebuilt each time a dialog closes.
    """
    keys = [key for key, _ in rows]
    if list(shown) != keys:
        wanted = set(keys)
        for key in [k for k in shown if k not in wanted]:
            table.remove_row(key)
            del shown[key]
        for key, cells in rows:
            if key not in shown:
                table.add_row(*cells, key=key)
                shown[key] = cells
        if list(shown) != keys:
            table.clear()
            shown.clear()
            for key, cells in rows:
                table.add_row(*cells, key=key)
                shown[key] = cells
            return
    for key, cells in rows:
        update_row(table, columns, key, cells, shown)


def update_row(table: DataTable[str | Text], columns: Sequence[str], key: str, cells: Cells,
               shown: dict[str, Cells]) -> None:
    """Redraw the cells of one shown row that differ from what it shows."""
    old = shown[key]
    if old == cells:
        return
    for column, before, after in zip(columns, old, cells, strict=True):
        if before != after:
            table.update_cell(key, column, after, update_width=True)
    shown[key] = cells
