"""The seller node (aim-node): keystore, local services and the P2P delivery endpoint."""
