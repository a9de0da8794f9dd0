"""The ``enforcer`` command and its sub-commands.

Owns: the parser, the worker and ``topics create`` commands, the one-line failures and
exit codes, ``main.py``; the operator sub-commands' parsers and dispatch
(``operator_commands.py``); ``demo``, ``replay`` and ``audit``, a module each.

May import: ``streams.core``, ``streams.serde``, ``streams.settings``,
``streams.faust_compat``, ``streams.kafka``, ``streams.state``, ``streams.gate``,
``streams.rekey``, ``streams.runtime``, ``streams.traffic``, ``streams.verify``.
"""
