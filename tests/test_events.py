"""Event types, the emitter and subscriptions."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import pytest

from rheo_nb import events
from rheo_nb.events import (
    Cancelled,
    Completed,
    Emitter,
    Event,
    EventType,
    Extracting,
    Failed,
    Progress,
    Queued,
    Restarted,
    Retrying,
    Skipped,
    Started,
    Status,
    Throttled,
    Validating,
)

P = Path("x.bin")
ONE_OF_EACH: list[Event] = [
    Queued("id", "u", P, 0),
    Started("id", "u", P, 10, 0),
    Progress("id", "u", 5, 10),
    Retrying("id", "u", 1, 0.5, "HTTP 503"),
    Restarted("id", "u", 3, "the server does not support resume"),
    Validating("id", "u"),
    Extracting("id", "u", 3, 10),
    Completed("id", "u", P, 10, 1.0),
    Failed("id", "u", P, "boom", 1.0),
    Skipped("id", "u", P, 10, "already downloaded"),
    Cancelled("id", "u", P, 3),
    Throttled("id", "u", "https://example.org", 2, 4, "429", 0.5),
]


def test_one_event_class_per_event_type() -> None:
    assert [e.type for e in ONE_OF_EACH] == list(EventType)
    assert [str(t) for t in EventType] == [
        "queued",
        "started",
        "progress",
        "retrying",
        "restarted",
        "validating",
        "extracting",
        "completed",
        "failed",
        "skipped",
        "cancelled",
        "throttled",
    ]


@pytest.mark.parametrize("event", ONE_OF_EACH, ids=lambda e: str(e.type))
def test_events_are_frozen_slotted_and_carry_id_and_url(event: Event) -> None:
    assert event.download_id == "id"
    assert event.url == "u"
    assert not hasattr(event, "__dict__")
    with pytest.raises(dataclasses.FrozenInstanceError):
        event.download_id = "other"  # type: ignore[misc]


def test_status_finished_and_ok() -> None:
    assert {s for s in Status if s.finished} == {
        Status.COMPLETED,
        Status.SKIPPED,
        Status.FAILED,
        Status.CANCELLED,
    }
    assert {s for s in Status if s.ok} == {Status.COMPLETED, Status.SKIPPED}


def test_handlers_get_their_type_only_and_catch_alls_get_everything() -> None:
    em = Emitter()
    completed: list[Event] = []
    everything: list[Event] = []
    star: list[Event] = []
    em.on(EventType.COMPLETED, completed.append)
    em.on(None, everything.append)
    em.on("*", star.append)
    for event in ONE_OF_EACH:
        em.emit(event)
    assert completed == [e for e in ONE_OF_EACH if e.type is EventType.COMPLETED]
    assert everything == ONE_OF_EACH
    assert star == ONE_OF_EACH


def test_event_type_may_be_given_as_a_string() -> None:
    em = Emitter()
    got: list[Event] = []
    em.on("failed", got.append)
    failed = next(e for e in ONE_OF_EACH if e.type is EventType.FAILED)
    em.emit(failed)
    assert got == [failed]


def test_unknown_event_type_is_refused() -> None:
    with pytest.raises(ValueError, match="finished"):
        Emitter().on("finished", print)


def test_handlers_run_in_subscription_order_typed_before_catch_all() -> None:
    em = Emitter()
    calls: list[str] = []
    em.on(None, lambda e: calls.append("all-1"))
    em.on(EventType.QUEUED, lambda e: calls.append("queued-1"))
    em.on(EventType.QUEUED, lambda e: calls.append("queued-2"))
    em.on(None, lambda e: calls.append("all-2"))
    em.emit(ONE_OF_EACH[0])
    assert calls == ["queued-1", "queued-2", "all-1", "all-2"]


def test_unsubscribe_stops_delivery_and_is_idempotent() -> None:
    em = Emitter()
    got: list[Event] = []
    sub = em.on(None, got.append)
    assert sub.active
    em.emit(ONE_OF_EACH[0])
    sub.unsubscribe()
    sub.unsubscribe()
    assert not sub.active
    em.emit(ONE_OF_EACH[1])
    assert got == [ONE_OF_EACH[0]]


def test_unsubscribe_removes_only_that_subscription() -> None:
    em = Emitter()
    a: list[Event] = []
    b: list[Event] = []
    sub_a = em.on(EventType.QUEUED, a.append)
    em.on(EventType.QUEUED, b.append)
    sub_a.unsubscribe()
    em.emit(ONE_OF_EACH[0])
    assert a == []
    assert b == [ONE_OF_EACH[0]]


def test_a_handler_may_unsubscribe_while_an_event_is_delivered() -> None:
    em = Emitter()
    calls: list[str] = []

    def once(event: Event) -> None:
        calls.append("once")
        sub.unsubscribe()

    sub = em.on(None, once)
    em.on(None, lambda e: calls.append("other"))
    em.emit(ONE_OF_EACH[0])
    em.emit(ONE_OF_EACH[1])
    assert calls == ["once", "other", "other"]


def test_a_failing_handler_is_logged_and_the_others_still_run(
    caplog: pytest.LogCaptureFixture,
) -> None:
    em = Emitter()
    got: list[Event] = []

    def broken(event: Event) -> None:
        raise RuntimeError("handler bug")

    em.on(None, broken)
    em.on(None, got.append)
    with caplog.at_level(logging.ERROR, logger="rheo_nb"):
        em.emit(ONE_OF_EACH[0])
    assert got == [ONE_OF_EACH[0]]
    assert "handler bug" in caplog.text
    assert caplog.records[0].name == events.log.name


@pytest.mark.parametrize(
    ("event", "message"),
    [
        (
            Throttled("id", "u", "https://example.org", 2, 4, "429"),
            "example.org slowed to 2 connections: 429",
        ),
        (
            Throttled("id", "u", "http://127.0.0.1:8080", 1, 2, "503", 0.75),
            "127.0.0.1:8080 slowed to 1 connection: 503, waiting 0.8s",
        ),
        (
            Throttled("id", "u", "https://example.org", 3, 2, "8 good answers in a row"),
            "example.org back up to 3 connections: 8 good answers in a row",
        ),
        (
            Throttled("id", "u", "https://example.org", 4, 4, "quota spent", 30.0),
            "example.org paused for 0:30: quota spent",
        ),
        (
            Throttled("id", "u", "https://example.org", 1, 1, "429", 0.0),
            "example.org kept at 1 connection: 429",
        ),
    ],
)
def test_throttled_says_what_changed_in_a_few_words(event: Throttled, message: str) -> None:
    assert event.message == message
