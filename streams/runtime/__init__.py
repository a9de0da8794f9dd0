"""The running worker: the Faust app, its process, its HTTP side.

Owns: the Faust application (topics, tables, the gate agent and its dispatch, the
timer that runs the gate's checkpoint, fencing before recovery, ``/ready`` and
``/metrics``), ``app.py``; the worker process and its logging, ``worker.py``; the
consent lookup (``GET /consent/{user_id}``), ``lookup.py``.

May import: ``streams.core``, ``streams.serde``, ``streams.settings``,
``streams.faust_compat``, ``streams.kafka``, ``streams.state``, ``streams.gate``,
``streams.rekey``.
"""
