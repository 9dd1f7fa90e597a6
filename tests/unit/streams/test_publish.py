"""A signal handed to the producer whose delivery then fails is not lost silently: logged and counted."""

from __future__ import annotations

import asyncio
import logging

import pytest

from streams import metrics
from streams.pipeline import Pipeline


def _publish_errors() -> float:
    return metrics.REGISTRY.get_sample_value("mlrisk_errors_total", {"stage": "publish"}) or 0.0


def test_a_failed_delivery_is_logged_and_counted_and_a_good_one_is_not(caplog: pytest.LogCaptureFixture) -> None:
    loop = asyncio.new_event_loop()
    try:
        failed, delivered, cancelled = loop.create_future(), loop.create_future(), loop.create_future()
        failed.set_exception(ConnectionError("broker away"))
        delivered.set_result(object())
        cancelled.cancel()
        before = _publish_errors()
        with caplog.at_level(logging.ERROR, logger="mlrisk.pipeline"):
            for delivery in (failed, delivered, cancelled):
                Pipeline._delivered(delivery)
        assert _publish_errors() == before + 1
        assert [r.getMessage() for r in caplog.records] == [
            "a message could not be delivered: ConnectionError('broker away')"
        ]
    finally:
        loop.close()
