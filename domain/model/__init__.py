"""The pure model: aggregates, events, value types, protocol objects, ledger rules, errors
and the ports (interfaces) the application needs.

Nothing in this package performs I/O, reads the clock, starts threads or logs; time, ids and
randomness come in as arguments from the application layer (``domain.app``). It imports
nothing else of the project.
"""
