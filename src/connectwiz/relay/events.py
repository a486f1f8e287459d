"""The relay's operational log: one line per event, for people (default) or machines (JSON)."""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TextIO

Listener = Callable[[str, dict[str, Any]], None]


class EventLog:
    def __init__(self, json_lines: bool = False, stream: TextIO | None = None) -> None:
        self.json_lines = json_lines
        self.stream = stream  # None: whatever sys.stderr is at the time of writing
        self._lock = threading.Lock()  # lines from executor threads must not interleave
        self._listeners: list[Listener] = []

    def subscribe(self, listener: Listener) -> None:
        """Also hand every event to ``listener`` (e.g. metrics), from the thread that logs it:
        the listener must be quick and thread-safe, and what it raises is not the logger's."""
        self._listeners.append(listener)

    def __call__(self, event: str, **fields: Any) -> None:
        now = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        fields = {k: v for k, v in fields.items() if v is not None}
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
        stream = self.stream or sys.stderr
        with self._lock:
            stream.write(line + "\n")
            stream.flush()
