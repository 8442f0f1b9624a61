"""The marketplace's pure core: aggregates, events, value types, protocol objects, errors.

Nothing in this package performs I/O or reads the clock; time, ids and randomness come
in as arguments from the application layer (``domain.application``).
"""
