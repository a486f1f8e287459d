"""The relay's operational log: one line per event, for people (default) or machines (JSON)."""

from __future__ import annotations

import contextlib
import json
import queue
import sys
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any, TextIO

Listener = Callable[[str, dict[str, Any]], None]

# Lines waiting for the writer thread, at most: beyond, logging waits for it, as a direct
# write waits for a slow journal, rather than memory growing without bound.
BEHIND_LIMIT = 10_000


class EventLog:
    def __init__(self, json_lines: bool = False, stream: TextIO | None = None) -> None:
        self.json_lines = json_lines
        self.stream = stream  # None: whatever sys.stderr is at the time of writing
        self._lock = threading.Lock()  # lines from executor threads must not interleave
        self._listeners: list[Listener] = []
        self.context: dict[str, Any] = {}  # fields every line carries (e.g. the worker)
        self._behind: queue.Queue[str | None] | None = None  # see writing_behind

    def subscribe(self, listener: Listener) -> None:
        """Also hand every event to ``listener`` (e.g. metrics), from the thread that logs it:
        the listener must be quick and thread-safe, and what it raises is not the logger's."""
        self._listeners.append(listener)

    def __call__(self, event: str, **fields: Any) -> None:
        now = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        fields = {k: v for k, v in {**self.context, **fields}.items() if v is not None}
        for listener in self._listeners:
            try:
                listener(event, fields)
            except Exception as exc:  # a metrics bug must never stop mail flowing
                fields.setdefault("listener_error", f"{type(exc).__name__}: {exc}")
        if self.json_lines:
            line = json.dumps({"ts": now, "event": event, **fields}, default=str)
        else:
            parts = [now, event]
            for key, value in fields.items():
                text = str(value)
                if not text or any(c.isspace() or c in '"=' for c in text):
                    text = json.dumps(text)
                parts.append(f"{key}={text}")
            line = " ".join(parts)
        behind = self._behind
        if behind is not None:
            behind.put(line + "\n")
        else:
            self._write(line + "\n")

    def _write(self, text: str) -> None:
        stream = self.stream or sys.stderr
        with self._lock:
            stream.write(text)
            stream.flush()

    @contextlib.contextmanager
    def writing_behind(self) -> Iterator[None]:
        """Meanwhile a thread of its own writes the lines, in order, as many at a time as
        have come: the relay's event loop only formats them. A write gives up the GIL, and
        getting it back from the busy receipt and spool threads took about 0.4 ms per line
        under load (or longer, if journald or the file behind stderr is slow). Every line
        is written when this ends; a kill -9 loses the last few milliseconds' lines. At most
        ``BEHIND_LIMIT`` lines wait: then logging waits too."""
        lines: queue.Queue[str | None] = queue.Queue(BEHIND_LIMIT)
        writer = threading.Thread(target=self._write_lines, args=(lines,), name="log",
                                  daemon=True)
        writer.start()
        self._behind = lines
        try:
            yield
        finally:
            lines.put(None)
            writer.join()
            self._behind = None
            rest = []
            with contextlib.suppress(queue.Empty):
                while True:  # logged while the writer stopped
                    rest.append(lines.get_nowait())
            if text := "".join(line for line in rest if line is not None):
                self._write(text)

    def _write_lines(self, lines: queue.Queue[str | None]) -> None:
        while True:
            batch = [lines.get()]
            with contextlib.suppress(queue.Empty):
                while batch[-1] is not None:
                    batch.append(lines.get_nowait())
            text = "".join(line for line in batch if line is not None)
            if text:
                with contextlib.suppress(OSError, ValueError):  # stderr gone: nobody reads
                    self._write(text)
            if batch[-1] is None:
                return
