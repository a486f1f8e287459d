"""ListTable: a DataTable for long lists (10,000 domains), and the helpers that fill it."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from itertools import zip_longest

from rich.cells import cell_len
from rich.text import Text
from textual.widgets import DataTable
from textual.widgets.data_table import DuplicateKey, Row, RowKey

Cells = tuple[str | Text, ...]


class ListTable(DataTable[str | Text]):
    """A DataTable for long lists of one-line cells.

    DataTable sizes its columns by formatting and measuring every cell of every new row
    through the console (about a quarter of a millisecond a row: most of the time taken to
    show 10,000 domains). A one-line Text, or a string that cannot hold markup or emoji
    codes, is as wide as its cell length, so those rows are sized from that; any other row
    is measured as DataTable does.
    """

    def _update_dimensions(self, new_rows: Iterable[RowKey]) -> None:
        columns = self.ordered_columns
        measure: list[RowKey] = []
        for row_key in new_rows:
            row, cells = self.rows.get(row_key), self._data.get(row_key)
            if row is None or cells is None:  # removed before the table was idle
                continue
            widths = [_one_line_width(cells.get(column.key)) for column in columns]
            if row.label is not None or row.auto_height or None in widths:
                measure.append(row_key)
                continue
            for column, width in zip(columns, widths, strict=True):
                column.content_width = max(column.content_width, width or 0)
        super()._update_dimensions(measure)  # also sets the virtual size

    def add_keyed_rows(self, rows: Sequence[tuple[str, Cells]]) -> None:
        """``add_row(*cells, key=key)`` for each row, with the per-table work (cursor check,
        refresh) done once instead of once a row: a tenth of the time for 10,000 rows.
        Relies on DataTable's internals as of Textual 8.2 (pinned)."""
        if not rows:
            return
        columns = self.ordered_columns
        first = self.row_count == 0
        for key, cells in rows:
            row_key = RowKey(key)
            if row_key in self._row_locations:
                raise DuplicateKey(f"The row key {row_key!r} already exists.")
            if len(cells) > len(columns):
                raise ValueError("More values provided than there are columns.")
            self._row_locations[row_key] = len(self.rows)
            self._data[row_key] = {column.key: cell
                                   for column, cell in zip_longest(columns, cells)}
            self.rows[row_key] = Row(row_key, 1)
            self._new_rows.add(row_key)
        self._require_update_dimensions = True
        self.cursor_coordinate = self.cursor_coordinate
        if first and columns and self.show_cursor and self.cursor_type != "none":
            self._highlight_cursor()  # as add_row does when the first row appears
        self._update_count += 1
        self.check_idle()


def _one_line_width(cell: object) -> int | None:
    """A cell's width when it is sure to render on one line as its characters, else None."""
    if type(cell) is Text:
        return None if "\n" in cell.plain else cell.cell_len
    if type(cell) is str:
        return None if any(c in cell for c in "[:\n") else cell_len(cell)
    return None


def sync_rows(table: ListTable, columns: Sequence[str],
              rows: Sequence[tuple[str, Cells]], shown: dict[str, Cells]) -> None:
    """Make ``table`` show ``rows`` (key, cells), touching only what changed.

    ``shown`` holds the rows as last drawn and is kept up to date. Removed rows go, rows
    added at the end are appended; any other reordering redraws the table. Filling a
    table still costs about 0.1 ms a row, so a list of 10,000 domains must not be rebuilt
    each time a dialog closes.
    """
    keys = [key for key, _ in rows]
    if list(shown) != keys:
        wanted = set(keys)
        for key in [k for k in shown if k not in wanted]:
            table.remove_row(key)
            del shown[key]
        new = [(key, cells) for key, cells in rows if key not in shown]
        table.add_keyed_rows(new)
        shown.update(new)
        if list(shown) != keys:
            table.clear()
            shown.clear()
            table.add_keyed_rows(rows)
            shown.update(rows)
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
