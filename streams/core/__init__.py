"""The pure core: what the enforcer decides, as functions of decoded records.

Owns: the training policy and its rules file (``policy.py``, ``default_policy.toml``),
consent state and how objection events change it (``consent.py``), what to emit for a
post, an objection event or a replay (``enforcement.py``), what counts as a valid input
record, the internal headers and the one partitioner of a user (``records.py``), and the
ISO 3166 country codes (``iso3166.py``).

May import: nothing else of ``streams``; no Kafka client, Faust, RocksDB, HTTP or CLI.
"""
