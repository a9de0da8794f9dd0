"""``--max-record-bytes`` against what the broker accepts (``topics.check_record_limit``),
without a broker: a fake admin client answers DescribeConfigs. The broker itself is in
``tests/test_topics_kafka.py``."""

from __future__ import annotations

import concurrent.futures

import pytest
from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import ConfigEntry, ConfigSource

import streams.kafka.topics as topics
from streams.settings import Settings, SettingsError


class Future:
    def __init__(self, answer: object) -> None:
        self.answer = answer

    def result(self, timeout: float | None = None) -> object:
        if isinstance(answer := self.answer, BaseException):
            raise answer
        return answer


class Admin:
    """Answers each DescribeConfigs round with the next of ``rounds``: an exception for
    every topic, or topic -> (max.message.bytes, its source); the others have the
    broker's default."""

    def __init__(self, rounds: list) -> None:
        self.rounds = rounds
        self.asked = 0

    def describe_configs(self, resources: list, request_timeout: float) -> dict:
        self.asked += 1
        answer = self.rounds.pop(0)
        out = {}
        for resource in resources:
            if isinstance(answer, BaseException):
                out[resource] = Future(answer)
                continue
            value, source = answer.get(resource.name, (1048588, ConfigSource.STATIC_BROKER_CONFIG))
            entry = ConfigEntry("max.message.bytes", str(value), source=source.value)
            out[resource] = Future({"max.message.bytes": entry})
        return out


@pytest.fixture(autouse=True)
def no_sleep(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(topics.time, "sleep", lambda seconds: None)


def test_a_limit_the_broker_accepts_passes() -> None:
    admin = Admin([{}])
    topics.check_record_limit(Settings(), admin)  # 1,000,000 <= the broker's 1,048,588
    assert admin.asked == 1


def test_a_topic_that_accepts_less_stops_the_worker_naming_it_and_both_numbers() -> None:
    s = Settings(max_record_bytes=2_000_000)
    small = {s.dlq_topic: (1_500_000, ConfigSource.DYNAMIC_TOPIC_CONFIG)}
    with pytest.raises(SettingsError) as raised:
        topics.check_record_limit(s, Admin([small]))
    message = str(raised.value)
    assert "\n" not in message
    # the smallest limit is the broker's default, on the topics without their own
    assert message.startswith(
        f"--max-record-bytes 2000000 is more than topic {s.training_topic} accepts: "
        "max.message.bytes 1048588 (the broker's message.max.bytes)"
    ), message
    s = Settings(app_id="app", max_record_bytes=2_000_000)
    large = {t: (3_000_000, ConfigSource.DYNAMIC_TOPIC_CONFIG) for t in topics.written_topics(s)}
    large[s.changelog_topic("ledger")] = (100_000, ConfigSource.DYNAMIC_TOPIC_CONFIG)
    with pytest.raises(SettingsError) as raised:
        topics.check_record_limit(s, Admin([large]))
    assert str(raised.value) == (
        "--max-record-bytes 2000000 is more than topic app-ledger-changelog accepts: "
        "max.message.bytes 100000 (set on the topic); a record between the two would be "
        "refused at delivery after every restart: use --max-record-bytes 100000 or less, "
        "or raise max.message.bytes of app-ledger-changelog"
    )


def test_a_describe_that_times_out_is_asked_again() -> None:
    timed_out = KafkaException(KafkaError(KafkaError._TIMED_OUT))
    admin = Admin([timed_out, concurrent.futures.TimeoutError(), {}])
    topics.check_record_limit(Settings(), admin)
    assert admin.asked == 3
    refused = KafkaException(KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED))
    with pytest.raises(KafkaException):  # not transient: raised (one line in main)
        topics.check_record_limit(Settings(), Admin([refused, {}]))


def test_topics_the_worker_writes_are_created_to_take_its_largest_record() -> None:
    assert topics.record_limit_config(Settings()) == {"max.message.bytes": "1048588"}
    big = Settings(max_record_bytes=5_000_000)
    assert topics.record_limit_config(big) == {"max.message.bytes": "5000000"}
    s = Settings()
    assert set(topics.written_topics(s)) == set(topics.topic_names(s)) - set(s.input_topics)
