"""The bundle's one error type: names the file, the line, the key and the problem."""

from __future__ import annotations

from connectwiz.errors import UserError


class BundleError(UserError):
    """A bundle that cannot be read, validated or written.

    The message is one line, ``FILE:LINE: KEY: PROBLEM`` with the parts that are known,
    so an admin can jump straight to the place to fix.
    """

    def __init__(
        self, problem: str, *, file: str | None = None, line: int | None = None,
        key: str | None = None,
    ) -> None:
        self.problem = " ".join(problem.split())  # always one line
        self.file = file
        self.line = line
        self.key = key
        where = file or ""
        if file and line:
            where = f"{file}:{line}"
        parts = [p for p in (where, key, self.problem) if p]
        super().__init__(": ".join(parts))
