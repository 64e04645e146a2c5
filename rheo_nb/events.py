"""Typed events, the emitter that delivers them, and subscriptions.

Events are frozen slotted dataclasses, one per :class:`EventType`. Each carries the
download id and the masked URL (never a secret). Handlers are plain callables run
synchronously, on the loop of the manager, in the order they subscribed; a handler that
raises is logged and does not disturb the download.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:
    from .objstore import ObjectPath

from .format import duration

log = logging.getLogger("rheo_nb")


class Status(StrEnum):
    """Where a download stands. An outcome is one of the last four."""

    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    SKIPPED = "skipped"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self not in (Status.QUEUED, Status.RUNNING)

    @property
    def ok(self) -> bool:
        return self in (Status.COMPLETED, Status.SKIPPED)


class EventType(StrEnum):
    QUEUED = "queued"
    STARTED = "started"
    PROGRESS = "progress"
    RETRYING = "retrying"
    RESTARTED = "restarted"
    VALIDATING = "validating"
    EXTRACTING = "extracting"
    COMPLETED = "completed"
    FAILED = "failed"
    SKIPPED = "skipped"
    CANCELLED = "cancelled"
    THROTTLED = "throttled"


@dataclass(frozen=True, slots=True)
class Queued:
    type: ClassVar[EventType] = EventType.QUEUED
    download_id: str
    url: str
    path: Path | ObjectPath
    priority: int


@dataclass(frozen=True, slots=True)
class Started:
    """A request is on its way; ``resumed_from`` is the size of the partial kept."""

    type: ClassVar[EventType] = EventType.STARTED
    download_id: str
    url: str
    path: Path | ObjectPath
    total: int | None
    resumed_from: int


@dataclass(frozen=True, slots=True)
class Progress:
    """Bytes of the file on disk so far (at most about ten a second per download)."""

    type: ClassVar[EventType] = EventType.PROGRESS
    download_id: str
    url: str
    bytes: int
    total: int | None


@dataclass(frozen=True, slots=True)
class Retrying:
    type: ClassVar[EventType] = EventType.RETRYING
    download_id: str
    url: str
    attempt: int
    delay: float
    error: str


@dataclass(frozen=True, slots=True)
class Restarted:
    """A partial could not be continued, and the file starts again from its first byte.

    ``discarded`` bytes of an earlier attempt or run were dropped; ``reason`` says why in
    a few words (``"the server does not support resume"``, ``"the file changed on the
    server"``).
    """

    type: ClassVar[EventType] = EventType.RESTARTED
    download_id: str
    url: str
    discarded: int
    reason: str


@dataclass(frozen=True, slots=True)
class Validating:
    type: ClassVar[EventType] = EventType.VALIDATING
    download_id: str
    url: str


@dataclass(frozen=True, slots=True)
class Extracting:
    """An archive is being unpacked: ``members`` done of ``total`` (None while unknown:
    a tar is read once, front to back). Throttled like progress."""

    type: ClassVar[EventType] = EventType.EXTRACTING
    download_id: str
    url: str
    members: int
    total: int | None


@dataclass(frozen=True, slots=True)
class Completed:
    type: ClassVar[EventType] = EventType.COMPLETED
    download_id: str
    url: str
    path: Path | ObjectPath
    bytes: int
    elapsed: float


@dataclass(frozen=True, slots=True)
class Skipped:
    type: ClassVar[EventType] = EventType.SKIPPED
    download_id: str
    url: str
    path: Path | ObjectPath
    bytes: int
    reason: str


@dataclass(frozen=True, slots=True)
class Failed:
    type: ClassVar[EventType] = EventType.FAILED
    download_id: str
    url: str
    path: Path | ObjectPath
    error: str
    elapsed: float


@dataclass(frozen=True, slots=True)
class Cancelled:
    type: ClassVar[EventType] = EventType.CANCELLED
    download_id: str
    url: str
    path: Path | ObjectPath
    bytes: int


@dataclass(frozen=True, slots=True)
class Throttled:
    """rheo_nb changed how it treats an origin, because of how the origin answered.

    ``origin`` is scheme, host and port (never user info or a path); ``concurrency`` the
    connections it is now allowed (``previous`` before); ``delay`` the seconds every
    request to it now waits (0: none); ``reason`` the cause in a few words (``"429"``,
    ``"503, Retry-After"``, ``"quota spent"``). The download id and URL are those of the
    response that led to the decision. :attr:`message` is a line a display can show::

        >>> Throttled("id", "u", "https://example.org", 2, 4, "429").message
        'example.org slowed to 2 connections: 429'
    """

    type: ClassVar[EventType] = EventType.THROTTLED
    download_id: str
    url: str
    origin: str
    concurrency: int
    previous: int
    reason: str
    delay: float = 0.0

    @property
    def message(self) -> str:
        host = self.origin.partition("://")[2] or self.origin
        n = self.concurrency
        conns = f"{n} connection{'s' if n != 1 else ''}"
        wait = f", waiting {duration(self.delay)}" if self.delay > 0 else ""
        if n < self.previous:
            return f"{host} slowed to {conns}: {self.reason}{wait}"
        if n > self.previous:
            return f"{host} back up to {conns}: {self.reason}"
        if self.delay > 0:
            return f"{host} paused for {duration(self.delay)}: {self.reason}"
        return f"{host} kept at {conns}: {self.reason}"


Event = (
    Queued
    | Started
    | Progress
    | Retrying
    | Restarted
    | Validating
    | Extracting
    | Completed
    | Skipped
    | Failed
    | Cancelled
    | Throttled
)
Handler = Callable[[Event], object]


class Subscription:
    """Returned by :meth:`Emitter.on`; :meth:`unsubscribe` stops delivery (idempotent)."""

    __slots__ = ("_emitter", "_handler", "_key")

    def __init__(self, emitter: Emitter, key: EventType | None, handler: Handler) -> None:
        self._emitter: Emitter | None = emitter
        self._key = key
        self._handler = handler

    def unsubscribe(self) -> None:
        if self._emitter is not None:
            self._emitter._remove(self._key, self._handler)
            self._emitter = None

    @property
    def active(self) -> bool:
        return self._emitter is not None


class Emitter:
    """Delivers events to handlers subscribed to one type, or to every type (``None``)."""

    def __init__(self) -> None:
        self._handlers: dict[EventType | None, list[Handler]] = {}

    def on(self, event_type: EventType | str | None, handler: Handler) -> Subscription:
        key = None if event_type in (None, "*") else EventType(event_type)
        # Copy-on-write: a handler may unsubscribe while an event is being delivered.
        self._handlers[key] = [*self._handlers.get(key, ()), handler]
        return Subscription(self, key, handler)

    def _remove(self, key: EventType | None, handler: Handler) -> None:
        handlers = self._handlers.get(key, [])
        if handler in handlers:
            self._handlers[key] = [h for h in handlers if h is not handler]

    def emit(self, event: Event) -> None:
        for key in (event.type, None):
            for handler in self._handlers.get(key, ()):
                try:
                    handler(event)
                except Exception:
                    log.exception("event handler %r failed on %s", handler, event.type)
