"""The relay's operational log: one line per event, for people (default) or machines (JSON)."""

from __future__ import annotations

import json
import sys
import threading
from datetime import UTC, datetime
from typing import Any, TextIO


class EventLog:
    def __init__(self, json_lines: bool = False, stream: TextIO | None = None) -> None:
        self.json_lines = json_lines
        self.stream = stream  # None: whatever sys.stderr is at the time of writing
        self._lock = threading.Lock()  # lines from executor threads must not interleave
        self.context: dict[str, Any] = {}  # fields every line carries (e.g. the worker)

    def __call__(self, event: str, **fields: Any) -> None:
        now = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        fields = {k: v for k, v in {**self.context, **fields}.items() if v is not None}
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
