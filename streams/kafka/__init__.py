"""The clients of the cluster: how the enforcer talks to Kafka and the registry.

Owns: the one connection configuration every client is built from, the access checks
and the one-line failures (``connection.py``); topic administration, start and resume
offsets (``topics.py``); the output producer every record of the gate goes through,
transactional with fencing (``outputs.py``); the schema registry client and the output
schemas registered at start (``registry.py``).

May import: ``streams.core``, ``streams.serde``, ``streams.settings``.
"""
