"""The objection enforcer, one folder per concept (docs/architecture.md).

Bottom to top: ``core`` (the rules, no I/O), ``settings`` and ``faust_compat`` (the
Faust boundary), ``serde``, ``kafka``, ``state``, ``gate``, ``rekey``, ``traffic``,
``verify``, ``runtime``, ``cli``. Each folder's ``__init__`` says what it owns and what
it may import; tests/unit/test_import_layers.py holds them to it.
"""
