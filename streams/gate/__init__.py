"""The gate: what happens to each record of the internal user-events topic.

Owns: the dispatcher, ``processor.py`` (admit, read a record as far as its kind needs,
hand it on by kind); live posts, ``posts.py``; objection events, ``objections.py``;
replay requests and their answers, ``replay.py``; writing every output of an input and
counting it, ``emit.py``; the DLQ record's format, ``dlq.py``; the input positions and
repositioning, ``positions.py``, over what has been processed and may be committed,
``offsets.py``; the whole commit protocol, ``checkpoint.py``; the gate's clocks,
``clock.py``; its counters and their Prometheus exposition, ``metrics.py``; the
optional C fast path for the common post, ``fastpath.py`` (whether and how it is
used), ``native.py`` and ``_native.c``.

May import: ``streams.core``, ``streams.serde``, ``streams.settings``,
``streams.faust_compat``, ``streams.kafka``, ``streams.state``.
"""
