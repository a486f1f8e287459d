"""ListTable, the DataTable the domain list uses for 10,000 rows: it must look exactly like a
DataTable filled row by row (same column widths, rows, cursor), only faster to fill."""

from __future__ import annotations

from rich.text import Text
from textual.app import App, ComposeResult
from textual.widgets import DataTable

from connectwiz.tui.list_table import Cells, ListTable, sync_rows

ROWS: list[tuple[str, Cells]] = [
    ("a", ("trusted.example", Text("Strict"), Text("✔ Supports TLS (Strict)", style="green"))),
    ("b", ("bücher.example", Text("Strict ⚠"), Text("✔ Supports TLS (Relaxed)"))),
    ("c", ("[b]markup[/b]", Text("two\nlines"), "emoji :smile: code")),  # measured the slow way
    ("d", ("x" * 40, Text(""), Text("✖ Could not validate: a much longer reason here"))),
]


class Tables(App[None]):
    def compose(self) -> ComposeResult:
        yield DataTable(id="plain")
        yield ListTable(id="fast")

    def on_mount(self) -> None:
        for table in self.query(DataTable):
            for label in ("Domain", "Mode", "Status"):
                table.add_column(label, key=label.lower())


def shape(table: DataTable) -> tuple[object, ...]:
    return ([c.content_width for c in table.ordered_columns], table.virtual_size,
            [table.get_row_at(i) for i in range(table.row_count)], table.cursor_row)


async def test_list_table_matches_a_data_table_filled_row_by_row() -> None:
    app = Tables()
    async with app.run_test() as pilot:
        plain = app.query_one("#plain", DataTable)
        fast = app.query_one("#fast", ListTable)
        for key, cells in ROWS:
            plain.add_row(*cells, key=key)
        fast.add_keyed_rows(ROWS)
        await pilot.pause()
        assert shape(fast) == shape(plain)
        assert fast.get_cell("b", "domain") == "bücher.example"


async def test_sync_rows_appends_removes_and_reorders() -> None:
    app = Tables()
    async with app.run_test() as pilot:
        fast = app.query_one("#fast", ListTable)
        columns = ("domain", "mode", "status")
        shown: dict[str, Cells] = {}
        sync_rows(fast, columns, ROWS[:2], shown)
        sync_rows(fast, columns, ROWS, shown)  # appended
        await pilot.pause()
        assert [fast.get_row_at(i)[0] for i in range(4)] == [c[0] for _, c in ROWS]
        sync_rows(fast, columns, [ROWS[3], ROWS[0]], shown)  # removed and reordered
        await pilot.pause()
        assert [fast.get_row_at(i)[0] for i in range(fast.row_count)] == [
            ROWS[3][1][0], ROWS[0][1][0]]
        assert list(shown) == ["d", "a"]
