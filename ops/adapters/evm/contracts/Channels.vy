# pragma version 0.4.3
# pragma evm-version prague
"""
@title Channels
@notice Non-custodial payment channels for aimarket. A buyer deposits an ERC-20 once and
        signs EIP-712 cumulative vouchers off chain; the operator (the hub) settles the
        latest voucher, paying sellers and the platform fee and refunding the rest.
@dev Invariants:
     - the contract never releases more of a channel than its buyer signed (cumulative
       voucher) and never more than was deposited;
     - the fee never exceeds the fee_bps snapshotted when the channel was opened;
     - only the operator settles: otherwise a buyer could close with an old, smaller voucher;
     - settlement is allowed until expiry + SETTLE_GRACE inclusive; the buyer's reclaim
       opens strictly after that, so the two windows never overlap;
     - pull payments: settle only credits `withdrawable`, so a payee the token refuses
       (blocklisted) cannot make settlement revert; anyone may push a credit to its owner
       with `withdraw_for`.
"""

from ethereum.ercs import IERC20

event ChannelOpened:
    channel_id: indexed(bytes32)
    buyer: indexed(address)
    amount: uint256
    expiry: uint256
    fee_bps: uint256

event ChannelToppedUp:
    channel_id: indexed(bytes32)
    amount: uint256
    deposit_total: uint256

event ChannelSettled:
    channel_id: indexed(bytes32)
    cumulative_amount: uint256
    fee_amount: uint256
    refund_amount: uint256

event PayeeCredited:
    channel_id: indexed(bytes32)
    payee: indexed(address)
    amount: uint256

event ChannelReclaimed:
    channel_id: indexed(bytes32)
    buyer: indexed(address)
    amount: uint256

event Withdrawn:
    account: indexed(address)
    amount: uint256

event FeeBpsChanged:
    old_fee_bps: uint256
    new_fee_bps: uint256

struct Channel:
    buyer: address
    deposit: uint256
    expiry: uint256
    fee_bps: uint256
    status: uint8

STATUS_NONE: constant(uint8) = 0
STATUS_OPEN: constant(uint8) = 1
STATUS_SETTLED: constant(uint8) = 2
STATUS_RECLAIMED: constant(uint8) = 3

MAX_FEE_BPS: constant(uint256) = 1000
BPS_DENOMINATOR: constant(uint256) = 10000
MAX_PAYEES: constant(uint256) = 16
# secp256k1 order / 2 (0x7FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF5D576E7357A4501DDFE92F46681B20A0): signatures
# with a larger s are the malleable twin of a valid one (EIP-2).
SECP256K1N_HALF: constant(uint256) = 57896044618658097711785492504343953926418782139537452191302581570759080747168

DOMAIN_TYPEHASH: constant(bytes32) = keccak256(
    "EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)"
)
VOUCHER_TYPEHASH: constant(bytes32) = keccak256("Voucher(bytes32 channelId,uint256 cumulativeAmount)")
NAME_HASH: constant(bytes32) = keccak256("aimarket-channels")
VERSION_HASH: constant(bytes32) = keccak256("1")

TOKEN: public(immutable(IERC20))
OPERATOR: public(immutable(address))
FEE_RECIPIENT: public(immutable(address))
SETTLE_GRACE: public(immutable(uint256))

fee_bps: public(uint256)
channels: public(HashMap[bytes32, Channel])
withdrawable: public(HashMap[address, uint256])


@deploy
def __init__(token: address, operator: address, fee_recipient: address, fee_bps: uint256, settle_grace: uint256):
    assert token != empty(address), "zero token"
    assert operator != empty(address), "zero operator"
    assert fee_recipient != empty(address), "zero fee recipient"
    assert fee_bps <= MAX_FEE_BPS, "fee too high"
    TOKEN = IERC20(token)
    OPERATOR = operator
    FEE_RECIPIENT = fee_recipient
    SETTLE_GRACE = settle_grace
    self.fee_bps = fee_bps


@external
def set_fee_bps(new_fee_bps: uint256):
    """@notice Change the fee for channels opened from now on; open channels keep theirs."""
    assert msg.sender == OPERATOR, "not operator"
    assert new_fee_bps <= MAX_FEE_BPS, "fee too high"
    log FeeBpsChanged(old_fee_bps=self.fee_bps, new_fee_bps=new_fee_bps)
    self.fee_bps = new_fee_bps


@external
@nonreentrant
def open(channel_id: bytes32, amount: uint256, expiry: uint256):
    """@notice Open a channel funded by msg.sender (the buyer); requires a prior approve."""
    assert channel_id != empty(bytes32), "zero id"
    assert amount > 0, "zero amount"
    assert expiry > block.timestamp, "bad expiry"
    assert self.channels[channel_id].status == STATUS_NONE, "channel exists"
    fee: uint256 = self.fee_bps
    self.channels[channel_id] = Channel(
        buyer=msg.sender, deposit=amount, expiry=expiry, fee_bps=fee, status=STATUS_OPEN
    )
    assert extcall TOKEN.transferFrom(msg.sender, self, amount, default_return_value=True), "transfer failed"
    log ChannelOpened(channel_id=channel_id, buyer=msg.sender, amount=amount, expiry=expiry, fee_bps=fee)


@external
@nonreentrant
def top_up(channel_id: bytes32, amount: uint256):
    """@notice Add to an open, unexpired channel's deposit; buyer only."""
    channel: Channel = self.channels[channel_id]
    assert channel.status == STATUS_OPEN, "channel not open"
    assert msg.sender == channel.buyer, "not buyer"
    assert amount > 0, "zero amount"
    assert block.timestamp < channel.expiry, "expired"
    total: uint256 = channel.deposit + amount
    self.channels[channel_id].deposit = total
    assert extcall TOKEN.transferFrom(msg.sender, self, amount, default_return_value=True), "transfer failed"
    log ChannelToppedUp(channel_id=channel_id, amount=amount, deposit_total=total)


@view
@internal
def _domain_separator() -> bytes32:
    # Computed per call (not cached) so a chain fork with a new chain id cannot replay vouchers.
    return keccak256(abi_encode(DOMAIN_TYPEHASH, NAME_HASH, VERSION_HASH, chain.id, self))


@view
@internal
def _voucher_digest(channel_id: bytes32, cumulative_amount: uint256) -> bytes32:
    struct_hash: bytes32 = keccak256(abi_encode(VOUCHER_TYPEHASH, channel_id, cumulative_amount))
    return keccak256(concat(x"1901", self._domain_separator(), struct_hash))


@view
@internal
def _recover(digest: bytes32, signature: Bytes[65]) -> address:
    # Returns empty(address) for anything that is not a canonical 65-byte (r, s, v) signature.
    if len(signature) != 65:
        return empty(address)
    r: uint256 = extract32(signature, 0, output_type=uint256)
    s: uint256 = extract32(signature, 32, output_type=uint256)
    v: uint256 = convert(slice(signature, 64, 1), uint256)
    if v != 27 and v != 28:
        return empty(address)
    if r == 0 or s == 0 or s > SECP256K1N_HALF:
        return empty(address)
    return ecrecover(digest, v, r, s)


@view
@external
def domain_separator() -> bytes32:
    return self._domain_separator()


@view
@external
def voucher_digest(channel_id: bytes32, cumulative_amount: uint256) -> bytes32:
    return self._voucher_digest(channel_id, cumulative_amount)


@view
@external
def recover_voucher(channel_id: bytes32, cumulative_amount: uint256, signature: Bytes[65]) -> address:
    """@notice The voucher's signer, or the zero address if the signature is not canonical."""
    return self._recover(self._voucher_digest(channel_id, cumulative_amount), signature)


@external
@nonreentrant
def settle(
    channel_id: bytes32,
    cumulative_amount: uint256,
    signature: Bytes[65],
    payees: DynArray[address, MAX_PAYEES],
    amounts: DynArray[uint256, MAX_PAYEES],
    fee_amount: uint256,
):
    """@notice Close a channel with the buyer's latest voucher; operator only."""
    assert msg.sender == OPERATOR, "not operator"
    channel: Channel = self.channels[channel_id]
    assert channel.status == STATUS_OPEN, "channel not open"
    assert block.timestamp <= channel.expiry + SETTLE_GRACE, "settle window closed"
    signer: address = self._recover(self._voucher_digest(channel_id, cumulative_amount), signature)
    assert signer != empty(address) and signer == channel.buyer, "bad signature"
    assert cumulative_amount <= channel.deposit, "above deposit"
    assert len(payees) == len(amounts), "length mismatch"
    assert fee_amount * BPS_DENOMINATOR <= cumulative_amount * channel.fee_bps, "fee above rate"

    self.channels[channel_id].status = STATUS_SETTLED
    paid: uint256 = fee_amount
    for i: uint256 in range(len(payees), bound=MAX_PAYEES):
        payee: address = payees[i]
        amount: uint256 = amounts[i]
        assert payee != empty(address), "zero payee"
        paid += amount
        self.withdrawable[payee] += amount
        log PayeeCredited(channel_id=channel_id, payee=payee, amount=amount)
    assert paid == cumulative_amount, "sum mismatch"

    refund: uint256 = channel.deposit - cumulative_amount
    self.withdrawable[FEE_RECIPIENT] += fee_amount
    self.withdrawable[channel.buyer] += refund
    log ChannelSettled(
        channel_id=channel_id, cumulative_amount=cumulative_amount, fee_amount=fee_amount, refund_amount=refund
    )


@external
@nonreentrant
def reclaim(channel_id: bytes32):
    """@notice Buyer takes the whole deposit back after expiry + SETTLE_GRACE if never settled."""
    channel: Channel = self.channels[channel_id]
    assert channel.status == STATUS_OPEN, "channel not open"
    assert msg.sender == channel.buyer, "not buyer"
    assert block.timestamp > channel.expiry + SETTLE_GRACE, "settle window open"
    self.channels[channel_id].status = STATUS_RECLAIMED
    self.withdrawable[channel.buyer] += channel.deposit
    log ChannelReclaimed(channel_id=channel_id, buyer=channel.buyer, amount=channel.deposit)


@internal
def _withdraw(account: address) -> uint256:
    amount: uint256 = self.withdrawable[account]
    if amount == 0:
        return 0
    self.withdrawable[account] = 0
    assert extcall TOKEN.transfer(account, amount, default_return_value=True), "transfer failed"
    log Withdrawn(account=account, amount=amount)
    return amount


@external
@nonreentrant
def withdraw() -> uint256:
    """@notice Send msg.sender's credited balance to msg.sender."""
    return self._withdraw(msg.sender)


@external
@nonreentrant
def withdraw_for(account: address) -> uint256:
    """@notice Anyone may push `account`'s credited balance to `account` (never elsewhere)."""
    return self._withdraw(account)
