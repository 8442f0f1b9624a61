"""Peer-to-peer delivery on the node: the server (seller), the client (buyer), their store."""
