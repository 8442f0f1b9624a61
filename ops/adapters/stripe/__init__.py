"""Payment workers: the Stripe gateway and the actors that call it (no imports at package load)."""
