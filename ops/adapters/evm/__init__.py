"""Chain adapter: Vyper payment-channel contracts, their compiled artifacts and a web3.py client.

Nothing here connects at import time; build a connection with :mod:`ops.adapters.evm.evm`,
deploy with :mod:`ops.adapters.evm.deploy` and talk to a deployment with
:class:`ops.adapters.evm.channels.ChainChannels`.
"""
