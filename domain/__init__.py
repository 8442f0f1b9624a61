"""The marketplace core: the pure model (``domain.model``) and the application (``domain.app``)."""
