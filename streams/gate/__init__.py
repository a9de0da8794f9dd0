"""The gate: what happens to each record of the internal user-events topic.

Owns: the processor (decode, check, call the core, emit, DLQ, replay answers,
repositioning), ``processor.py``; the gate's own input positions and what it may
commit, ``offsets.py``; its counters and their Prometheus exposition, ``metrics.py``;
the optional C fast path for the common post, ``native.py`` and ``_native.c``.

May import: ``streams.core``, ``streams.serde``, ``streams.settings``,
``streams.faust_compat``, ``streams.kafka``, ``streams.state``.
"""
