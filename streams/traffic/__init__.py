"""Synthetic traffic: posts, objection events and bad records, and producing them.

Owns: the deterministic generator (no Kafka), ``generator.py``, and producing its records
to the input topics (``generate``, ``demo``, the benchmark), ``produce.py``.

May import: ``streams.core``, ``streams.serde``, ``streams.settings``,
``streams.kafka``.
"""
