"""Serialization: every record the enforcer reads or writes, as bytes.

Owns: the Avro codec (single-object encoding and the Confluent wire format, schema
fingerprints, schema history, the registry lookups it retries), ``codec.py``, and the
readers, writers and splicers compiled for the current schemas, ``avro_compiled.py``.

May import: ``streams.core``.
"""
