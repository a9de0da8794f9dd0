"""The re-keying stage: the inputs, partitioned any way, onto the internal topic.

Owns: the child process that reads ``posts`` and ``objections`` on librdkafka and
forwards each record's unchanged bytes to its user's partition of the internal topic
(objections first), with its own flush-then-commit, ``stage.py``.

May import: ``streams.core``, ``streams.serde``, ``streams.settings``,
``streams.kafka``.
"""
