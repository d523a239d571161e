"""Envoy's output, line by line, and which filter log lines belong to which case.

Envoy runs with ``--log-format '@fk|%l|%n|%j'``: level, logger name and the message JSON-escaped
(``%j``), so every application-log line is exactly one line, whatever the filter logged. The access
log writes ``@filterkit-case-end|<case tag>|<status>|<flags>|<details>`` lines; everything else
(e.g. a crash dump) is kept as an "other" line.

Attribution: the Lua filter in front of the filter under test logs ``filterkit-case-begin <tag>``
through the same ordered application log before the filter sees the request. Cases run one at a
time on one worker (``--concurrency 1``), and the next case starts only after the previous response
arrived (which Envoy sends after the stream's ``proxy_on_log``), so a case's lines are exactly those
between its begin marker and the next begin marker. After the last case the runner sends a sentinel
request to a control listener (no filter) and waits for its end marker: the end markers are
buffered by Envoy and flushed later, so they only serve as a barrier and for response details.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from ..spec import LOG_LEVELS
from ..verdict import LogRecord
from .config import BEGIN_MARKER, END_MARKER

LOG_PREFIX = "@fk|"
LOG_FORMAT = LOG_PREFIX + "%l|%n|%j"
WASM_LOGGER = "wasm"
MARKER_LOGGER = "lua"
SENTINEL_TAG = "end"

# Envoy (spdlog) level names -> spec.LOG_LEVELS
LEVELS = {"trace": "trace", "debug": "debug", "info": "info", "warning": "warn", "warn": "warn",
          "error": "error", "critical": "critical"}
# spec.LOG_LEVELS -> the name Envoy's --log-level / --component-log-level accept
ENVOY_LEVEL_NAMES = {"trace": "trace", "debug": "debug", "info": "info", "warn": "warning", "error": "error",
                     "critical": "critical"}

_BEGIN = re.compile(re.escape(BEGIN_MARKER) + r" (\S*)$")


@dataclass(frozen=True)
class EnvoyLine:
    kind: str  # "log" (application log), "end" (access-log case end marker) or "other"
    raw: str
    level: str = ""  # spec level (trace … critical) for "log" lines
    logger: str = ""
    message: str = ""  # decoded message; for "end" lines the case tag
    details: tuple[str, ...] = ()  # "end" lines: status, response flags, response code details

    @property
    def begin_tag(self) -> str | None:
        """The case tag when this is a begin marker."""
        if self.kind != "log" or self.logger != MARKER_LOGGER:
            return None
        match = _BEGIN.search(self.message)
        return match.group(1) if match else None

    def describe(self) -> str:
        """The line for a human: ``[level][logger] message`` (the message with real line breaks)."""
        if self.kind == "log":
            return f"[{self.level}][{self.logger}] {self.message}"
        return self.raw


def parse_line(raw: str) -> EnvoyLine:
    raw = raw.rstrip("\r\n")
    if raw.startswith(LOG_PREFIX):
        parts = raw[len(LOG_PREFIX):].split("|", 2)
        if len(parts) == 3:
            level, logger, escaped = parts
            return EnvoyLine("log", raw, LEVELS.get(level, level), logger, _unescape(escaped))
    if raw.startswith(END_MARKER + "|"):
        fields = raw.split("|")
        return EnvoyLine("end", raw, message=fields[1] if len(fields) > 1 else "", details=tuple(fields[2:]))
    return EnvoyLine("other", raw, message=raw)


def _unescape(text: str) -> str:
    try:
        return json.loads('"' + text + '"')
    except ValueError:
        return text


class FilterLogs:
    """Recognises the filter's own log lines (``wasm log <name> <root_id> <vm_id>: message``)."""

    def __init__(self, name: str, root_id: str, vm_id: str, min_level: str = "trace"):
        parts = [name, root_id, vm_id]
        # Envoy builds the prefix from the non-empty parts; root contexts log without the plugin name.
        candidates = {" ".join(p for p in combo if p) for combo in (parts, [root_id, vm_id], [name, vm_id], [vm_id])}
        self._prefixes = sorted((f"wasm log {c}: " if c else "wasm log: " for c in candidates), key=len, reverse=True)
        self._min = LOG_LEVELS.index(min_level)

    def is_filter_line(self, line: EnvoyLine) -> bool:
        return line.kind == "log" and line.logger == WASM_LOGGER and line.message.startswith("wasm log")

    def record(self, line: EnvoyLine) -> LogRecord | None:
        """The filter's log record for ``line``, None when it is not a filter log line (or below the level)."""
        if not self.is_filter_line(line):
            return None
        if line.level in LOG_LEVELS and LOG_LEVELS.index(line.level) < self._min:
            return None
        for prefix in self._prefixes:
            if line.message.startswith(prefix):
                return LogRecord(line.level, line.message[len(prefix):])
        match = re.match(r"wasm log[^:]*: ", line.message)
        return LogRecord(line.level, line.message[match.end():] if match else line.message)

    def failures(self, lines: list[EnvoyLine]) -> list[str]:
        """Envoy's own Wasm error lines (traps, VM failures), not the filter's log lines."""
        return [line.message for line in lines
                if line.kind == "log" and line.logger == WASM_LOGGER and line.level in ("error", "critical")
                and not self.is_filter_line(line)]


@dataclass
class Windows:
    """Envoy's output cut at the case markers."""

    startup: list[EnvoyLine]  # before the first case
    cases: dict[str, list[EnvoyLine]]  # case tag -> its lines
    after: list[EnvoyLine]  # from the sentinel on (includes shutdown)
    ends: dict[str, EnvoyLine]  # case tag -> its access-log end marker


def split_windows(lines: list[EnvoyLine]) -> Windows:
    startup: list[EnvoyLine] = []
    cases: dict[str, list[EnvoyLine]] = {}
    after: list[EnvoyLine] = []
    ends: dict[str, EnvoyLine] = {}
    current = startup
    for line in lines:
        if line.kind == "end":
            ends.setdefault(line.message, line)
            continue
        tag = line.begin_tag
        if tag is not None:
            current = after if tag == SENTINEL_TAG else cases.setdefault(tag, [])
            continue
        current.append(line)
    return Windows(startup, cases, after, ends)


def shutdown_lines(after: list[EnvoyLine]) -> list[EnvoyLine]:
    """The lines from Envoy's shutdown on (after it caught the stop signal)."""
    for i, line in enumerate(after):
        if line.kind == "log" and "caught" in line.message and ("SIGTERM" in line.message or "SIGINT" in line.message):
            return after[i + 1:]
    return after


def tail(lines: list[EnvoyLine], count: int = 8, *, skip_debug: bool = True) -> str:
    """Envoy's last ``count`` meaningful lines, for an error message."""
    chosen = [l for l in lines if l.kind != "end" and not (skip_debug and l.level in ("trace", "debug"))
              and l.begin_tag is None]
    text = " | ".join(l.describe().replace("\n", " ⏎ ") for l in chosen[-count:])
    return text or "(no output)"
