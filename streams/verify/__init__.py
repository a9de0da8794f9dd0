"""The independent check of what the enforcer wrote (``enforcer verify``).

Owns: the checker, which re-derives from the topics alone, with its own Avro decoding,
consent rule and policy reading, what must hold (``checker.py``), and its HTML report
(``report.py``). It imports none of the worker's decision code, so that a fault there
cannot hide itself.

May import: ``streams.settings``, ``streams.kafka``.
"""
