"""Chain adapter: Vyper payment-channel contracts, their compiled artifacts and a web3.py client.

Nothing here connects at import time; build a connection with :mod:`workers.chain.evm`,
deploy with :mod:`workers.chain.deploy` and talk to a deployment with
:class:`workers.chain.channels.ChainChannels`.
"""
