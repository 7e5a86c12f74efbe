"""One reason a submission folder would not serve or would be refused (shared by the folder and loader checks)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Problem:
    """One reason the folder would not serve or would be refused, and how to fix it."""

    file: str
    message: str
    fix: str

    def __str__(self) -> str:
        return f"{self.file}: {self.message}; fix: {self.fix}"
