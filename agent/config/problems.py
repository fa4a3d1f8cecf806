"""A config's problems as values: `ConfigError` carries every one at once, each a line with its key path.

A caller decides by type (`except ConfigError`) and by a problem's `key`, never by its words.
"""

from __future__ import annotations

from typing import Iterable, List

from agent import errors


class Problem(str):
    """One line, `file: key.path: message`, as the user reads it; `key` is the key path ("" for the
    file as a whole). A str, so every caller that prints or compares lines keeps working."""

    key: str

    def __new__(cls, line: str, key: str = "") -> "Problem":
        problem = super().__new__(cls, line)
        problem.key = key
        return problem


class ConfigError(errors.ConfigError):
    """Raised with every problem found; each problem is one line `file: key.path: message`."""

    def __init__(self, problems: Iterable[str]) -> None:
        self._found = [p if isinstance(p, Problem) else Problem(p) for p in problems]
        # Lines, as every caller prints them; each is a Problem with its key.
        self.problems: List[str] = list(self._found)
        super().__init__("\n".join(self.problems))

    def outside(self, prefix: str) -> List[str]:
        """The problems except those about the key `prefix` and the keys under it."""
        return [p for p in self._found if not under(p, prefix)]


class FileProblem(errors.ConfigError):
    """A config or state file that cannot be read or parsed: one line, without the file's name."""


def under(problem: Problem, prefix: str) -> bool:
    """Whether `problem` is about the key `prefix` or a key under it."""
    key = problem.key
    return key == prefix or key.startswith(prefix + ".") or key.startswith(prefix + "[")
