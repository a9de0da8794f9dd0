"""The gate's state: the consent table and the live-post ledger, on RocksDB.

Owns: the tables' RocksDB partitions written together with their changelog records
(``TableState``), the persisted changelog offsets, and the ledger that holds removals
until their tombstones are acknowledged (``ledger.py``).

May import: ``streams.core``, ``streams.serde``, ``streams.settings``,
``streams.faust_compat``, ``streams.kafka``.
"""
