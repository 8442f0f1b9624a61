"""Application commands, one mixin per area, combined in ``domain.application.Marketplace``."""
