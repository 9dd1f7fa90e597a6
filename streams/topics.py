"""The topics the worker needs: created (or, with MLRISK_CREATE_TOPICS=false, checked) before it starts."""

from __future__ import annotations

import asyncio
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError, for_code

from streams.config import Settings, SettingsError
from streams.ingest.service import state_topic
from streams.kafka_security import client_options

TABLE_NAMES = ("engine-state", "paper-books")


async def ensure_topics(settings: Settings) -> None:
    """Create the topics the system reads and writes, partitioned alike so one symbol's data is co-located.

    With MLRISK_CREATE_TOPICS=false (an administrator provisions topics) they are only checked: a missing one
    stops start-up with its name."""
    plain = (
        settings.market_data_topic,
        settings.dlq_topic,
        settings.internal_dlq_topic,
        settings.bars_topic,
        settings.signals_topic,
        settings.executions_topic,
    )
    # changelog topics too: created here they exist before Faust's first write to them
    compacted = (state_topic(settings), *(f"{settings.faust_app_id}-{table}-changelog" for table in TABLE_NAMES))
    replicas = settings.kafka_replication_factor
    await create_missing_topics(
        client_options(settings),
        [NewTopic(name, settings.partitions, replicas) for name in plain]
        + [
            NewTopic(name, settings.partitions, replicas, topic_configs={"cleanup.policy": "compact"})
            for name in compacted
        ]
        # Faust's leader election topic of this worker's group (`Settings.faust_group_id`): one partition
        + [NewTopic(f"{settings.faust_group_id}-__assignor-__leader", 1, replicas)],
        create=settings.create_topics,
    )


async def create_missing_topics(options: dict[str, Any], topics: list[NewTopic], *, create: bool = True) -> None:
    """Create those of `topics` the broker lacks; return once its metadata lists them (at most about 30 s).

    `options`: the client options of `streams.kafka_security.client_options`. With `create` false, a missing
    topic raises SettingsError naming it."""
    admin = AIOKafkaAdminClient(**options)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        wanted = [topic for topic in topics if topic.name not in existing]
        if wanted and not create:
            raise SettingsError(
                "MLRISK_CREATE_TOPICS is false and the broker lacks these topics (or does not let this user see "
                f"them): {', '.join(sorted(topic.name for topic in wanted))}"
            )
        if wanted:
            refused = creation_errors(await admin.create_topics(wanted))
            if refused:
                raise TopicCreationError("the broker refused to create " + "; ".join(refused))
            # a broker just started answers the creation before its metadata lists the topics; a consumer that
            # subscribes in between ignores them as missing until its next metadata refresh, minutes later
            names = {topic.name for topic in wanted}
            for _ in range(150):
                if names <= set(await admin.list_topics()):
                    break
                await asyncio.sleep(0.2)
            else:
                missing = sorted(names - set(await admin.list_topics()))
                raise TopicCreationError(f"topics created but not listed by the broker after 30 s: {missing}")
    finally:
        await admin.close()


class TopicCreationError(RuntimeError):
    """The broker did not create a topic the worker needs (not authorised, bad replication factor, ...)."""


def creation_errors(response: Any) -> list[str]:
    """'topic: error' for each topic a CreateTopics response refused; a topic that already exists (another worker
    created it first) is no error. aiokafka returns these per topic instead of raising them."""
    refused = []
    for entry in getattr(response, "topic_errors", []):
        name, code = entry[0], entry[1]
        if code in (0, TopicAlreadyExistsError.errno):
            continue
        message = entry[2] if len(entry) > 2 and entry[2] else for_code(code).__name__
        refused.append(f"{name}: {message} (error {code})")
    return refused
