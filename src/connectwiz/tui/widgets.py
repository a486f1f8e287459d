"""Widget helpers shared by the steps and dialogs. The editors (``connectwiz.tui.editors``)
and the long-list table (``connectwiz.tui.list_table``) live apart: the Start screen needs
neither, and Textual's TextArea and DataTable take a while to import."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from rich.cells import cell_len
from rich.text import Text
from textual.binding import Binding
from textual.dom import DOMNode
from textual.screen import Screen
from textual.widgets import Static


def no_blink(screen: Screen[Any]) -> None:
    """Snapshot runs turn the cursor blink off (``App.blink``) so every picture is the same."""
    if not getattr(screen.app, "blink", True):
        for editor in screen.query("Input, TextArea"):  # by name: no import for a lookup
            editor.cursor_blink = False  # type: ignore[attr-defined]


def key_of(node: DOMNode, binding_id: str) -> str:
    """The key of binding ``binding_id`` as the footer shows it (its first key), looked up on
    ``node``'s class, then on the screens below it: hints built with it name the real key."""
    owners: list[DOMNode] = [node, *reversed(node.app.screen_stack), node.app]
    for owner in owners:
        for binding in Binding.make_bindings(type(owner).BINDINGS):
            if binding.id == binding_id:
                return node.app.get_key_display(binding)
    raise KeyError(f"no binding {binding_id!r} for {type(node).__name__}")


LabelRow = tuple[str | Text, str | Text]


class Listing(Static):
    """A bold heading, then one ``label  value`` line per row, indented by two. A long value
    wraps under itself (in a column when ``aligned``, else four in) instead of at the left
    edge, at any width: the text is laid out for the widget's width when drawn."""

    def __init__(self, *, id: str, aligned: bool = False) -> None:
        super().__init__(id=id)
        self.aligned = aligned
        self.parts: tuple[Text, list[LabelRow], Text] = (Text(), [], Text())

    def show(self, heading: Text, rows: Iterable[LabelRow], tail: Text | None = None) -> None:
        self.parts = (heading, list(rows), tail or Text())
        self.update(self._layout())

    def on_resize(self) -> None:
        self.update(self._layout())

    def _layout(self) -> Text:
        heading, rows, tail = self.parts
        width = max(self.content_region.width or 80, 30)
        label_width = max((cell_len(str(label)) for label, _ in rows), default=0)
        out = heading.copy()
        for label, value in rows:
            label = Text(label) if isinstance(label, str) else label
            value = Text(value) if isinstance(value, str) else value
            out.append("\n  ")
            if self.aligned:
                out.append_text(label).append(" " * (label_width + 2 - label.cell_len))
                line, indent = value, 2 + label_width + 2
            else:
                line, indent = Text.assemble(label, " ", value), 4
            wrapped = line.wrap(self.app.console, width - indent)
            out.append_text(Text("\n" + " " * indent).join(wrapped))
        if tail:
            out.append("\n").append_text(tail)
        return out
