"""Compute at the seller's node: registered pipelines served over ``aimarket-invoke/1`` (docs/protocol.md, "Compute")."""
