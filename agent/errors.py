"""What can go wrong, as types: each kind has the one line the user sees.

A caller decides by type, never by comparing message texts: `except ConfigError` for a file to
fix, `except BrokerRefusal` for a broker's no (its reason code as a value), `except
HardwareError` for a pin or a bus. `str(error)` is the line for the log or stderr; it names the
file or key and the fix, and never holds a secret.
"""

from __future__ import annotations


class AgentError(Exception):
    """The root: anything the agent or its tools tell a user about."""

    @property
    def line(self) -> str:
        """The one line the user sees (the first, where a subclass carries several)."""
        return str(self).split("\n", 1)[0]


class ConfigError(AgentError):
    """A config file (or a file it names) to fix: waiting does not heal it; the exit is 2."""


class CertificateError(AgentError):
    """A certificate, key or CA that cannot be used as configured (unreadable, mismatched, expired)."""


class BrokerRefusal(AgentError):
    """The broker said no (CONNACK, SUBACK, PUBACK or DISCONNECT): `code` is its reason code."""

    def __init__(self, line: str, code: int) -> None:
        super().__init__(line)
        self.code = code


class HardwareError(AgentError):
    """A pin, bus or sensor could not be opened or read: retried, and published as `quality: error`."""
