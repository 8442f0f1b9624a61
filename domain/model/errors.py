"""One error hierarchy for the whole marketplace.

Every error has a stable snake_case ``code`` and an HTTP ``status``; the API maps them to
``application/problem+json`` in exactly one place (``api.errors``). Resources and workers
raise these and never catch them to build responses themselves.
"""

from __future__ import annotations

from typing import Any


class MarketError(Exception):
    """Raised for every expected failure; the root of the hierarchy."""

    code = "market_error"
    status = 400
    title = "Request failed"

    def __init__(self, detail: str = "", *, param: str | None = None, **extra: Any) -> None:
        super().__init__(detail or self.title)
        self.detail = detail or self.title
        self.param = param
        self.extra = extra


class InvalidInput(MarketError):
    """Raised when a request or command argument is malformed or out of range."""

    code = "invalid_input"
    status = 422
    title = "Invalid input"


class MalformedBody(InvalidInput):
    """Raised when a request body is not valid JSON of the expected shape."""

    code = "malformed_body"
    status = 400
    title = "Malformed request body"


class NestingTooDeep(MalformedBody):
    """Raised when a JSON document nests arrays and objects deeper than the hub reads (64)."""

    code = "nesting_too_deep"
    status = 422
    title = "JSON nested too deeply"


class InvalidText(InvalidInput):
    """Raised when a string is not valid Unicode text: invalid UTF-8, a lone surrogate, NUL or
    another C0 control character (tab, newline and CR are allowed in free-text fields only)."""

    code = "invalid_text"
    title = "Invalid text"


class UnsupportedMediaType(MarketError):
    """Raised when a body is sent with another content type than the operation takes, or to an
    operation that takes no body."""

    code = "unsupported_media_type"
    status = 415
    title = "Unsupported media type"


class UriTooLong(MarketError):
    """Raised when the request target (path and query) is longer than the hub reads."""

    code = "uri_too_long"
    status = 414
    title = "URI too long"


class HeadersTooLarge(MarketError):
    """Raised when the request's header fields are larger in total than the hub reads."""

    code = "headers_too_large"
    status = 431
    title = "Request header fields too large"


class NotFound(MarketError):
    """Raised when the addressed thing does not exist (or is not visible to the caller)."""

    code = "not_found"
    status = 404
    title = "Not found"


class Conflict(MarketError):
    """Raised when a command loses an optimistic-concurrency race too many times."""

    code = "conflict"
    status = 409
    title = "Concurrent modification"


class AlreadyExists(Conflict):
    """Raised when creating something whose natural key is already taken."""

    code = "already_exists"
    title = "Already exists"


class InvalidState(Conflict):
    """Raised when a command is not allowed in the aggregate's current state."""

    code = "invalid_state"
    title = "Not allowed in the current state"


class IdempotencyKeyReused(Conflict):
    """Raised when an Idempotency-Key is replayed with a different request body."""

    code = "idempotency_key_reused"
    title = "Idempotency key reused with another request"


class Unauthenticated(MarketError):
    """Raised when credentials are missing, malformed, expired or wrong."""

    code = "unauthenticated"
    status = 401
    title = "Authentication required"


class InvalidCredentials(Unauthenticated):
    """Raised when a login, API key or client secret does not match."""

    code = "invalid_credentials"
    title = "Invalid credentials"


class TotpRequired(Unauthenticated):
    """Raised when an account has two-factor enabled and no (or a wrong) code was sent."""

    code = "totp_required"
    title = "Two-factor code required"


class TokenInvalid(Unauthenticated):
    """Raised when a bearer token is malformed, badly signed, expired or of an unknown key."""

    code = "token_invalid"
    title = "Invalid token"


class TokenReplayed(Unauthenticated):
    """Raised when a single-use token id (``jti``) or nonce is presented a second time."""

    code = "token_replayed"
    title = "Token or nonce already used"


class SignatureInvalid(Unauthenticated):
    """Raised when a signature does not verify against the expected key."""

    code = "signature_invalid"
    title = "Signature does not verify"


class KeyExpired(Unauthenticated):
    """Raised when a rotated-out key is used after its grace period."""

    code = "key_expired"
    title = "Key no longer accepted"


class Forbidden(MarketError):
    """Raised when an authenticated caller lacks the role or ownership required."""

    code = "forbidden"
    status = 403
    title = "Forbidden"


class DeviceNotEnrolled(Forbidden):
    """Raised when a message is signed by a key that belongs to no enrolled device."""

    code = "device_not_enrolled"
    title = "Device not enrolled"


class DeviceSuspended(Forbidden):
    """Raised when a suspended device tries to act."""

    code = "device_suspended"
    title = "Device suspended"


class InsufficientFunds(MarketError):
    """Raised when a debit would overdraw a channel."""

    code = "channel_exhausted"
    status = 402
    title = "Channel exhausted"


class PayloadTooLarge(MarketError):
    """Raised when a request body exceeds the size limit."""

    code = "payload_too_large"
    status = 413
    title = "Payload too large"


class Unavailable(MarketError):
    """Raised when a backing service (store, broker, chain) cannot be reached."""

    code = "unavailable"
    status = 503
    title = "Service unavailable"


class NonceReplayed(TokenReplayed):
    """Raised when a signed credential's proof ``nonce`` was already used by that device."""

    code = "nonce_replayed"
    title = "Credential nonce already used"


class CredentialStale(Unauthenticated):
    """Raised when a credential's proof ``created`` is outside the hub's replay window (±5 min)."""

    code = "credential_stale"
    title = "Credential too old or from the future"


class ForeignDevice(Forbidden):
    """Raised when a credential is signed by another device than the authenticated one
    (for instance a device of another seller)."""

    code = "foreign_device"
    title = "Credential signed by another device"


class NotListingOwner(Forbidden):
    """Raised when a seller updates or delists a listing that another seller owns."""

    code = "not_listing_owner"
    title = "Listing owned by another seller"


class PaymentRailUnavailable(InvalidState):
    """Raised when a channel asks for a funding rail (card, chain) this hub has not configured."""

    code = "payment_rail_unavailable"
    title = "Payment rail not configured"


class DepositAlreadyCredited(AlreadyExists):
    """Raised when an on-chain deposit (tx hash + log index) was already credited to a channel."""

    code = "deposit_already_credited"
    title = "Deposit already credited"


class WalletRequired(InvalidState):
    """Raised when a chain payment needs an account's registered wallet and there is none."""

    code = "wallet_required"
    title = "Register a wallet first"


class WalletMismatch(Forbidden):
    """Raised when an on-chain deposit was made by another address than the caller's wallet."""

    code = "wallet_mismatch"
    title = "Deposit made by another wallet"


# -- carrying an error between processes (debits answered by the channel's owner) --------------
def error_to_wire(exc: BaseException) -> dict[str, Any]:
    """A JSON-able form of ``exc``; anything but a MarketError becomes ``unavailable``."""
    if isinstance(exc, MarketError):
        return {"code": exc.code, "detail": exc.detail, "param": exc.param, "extra": exc.extra}
    return {"code": Unavailable.code, "detail": "the request could not be completed; retry it",
            "param": None, "extra": {}}


def error_from_wire(wire: dict[str, Any]) -> MarketError:
    """The error ``error_to_wire`` described, as the same class (same code and status)."""
    cls = _classes_by_code().get(str(wire.get("code")), Unavailable)
    return cls(str(wire.get("detail") or ""), param=wire.get("param"), **dict(wire.get("extra") or {}))


def _classes_by_code() -> dict[str, type[MarketError]]:
    found: dict[str, type[MarketError]] = {}
    pending: list[type[MarketError]] = [MarketError]
    while pending:
        cls = pending.pop()
        found.setdefault(cls.code, cls)
        pending.extend(cls.__subclasses__())
    return found


# -- the card payment provider's boundary -------------------------------------------------
class PaymentProviderUnavailable(Unavailable):
    """Raised when Stripe cannot be reached, times out, rate-limits, or answers 409 or 5xx.

    Transient: retry later with the same idempotency key, which makes the retry safe.
    """

    code = "payment_provider_unavailable"
    title = "Payment provider unavailable"
    retryable = True


class PaymentProviderRejected(InvalidInput):
    """Raised when Stripe refuses a request with a 4xx answer; the same request cannot succeed."""

    code = "payment_provider_rejected"
    title = "Payment provider rejected the request"
    retryable = False


class PaymentIdempotencyConflict(PaymentProviderRejected):
    """Raised when an idempotency key was already used at Stripe with other parameters."""

    code = "payment_idempotency_conflict"
    status = 409
    title = "Idempotency key already used with other parameters"


class PaymentProviderMisconfigured(PaymentProviderRejected):
    """Raised when Stripe refuses our credentials (401/403): our deployment's fault."""

    code = "payment_provider_misconfigured"
    status = 500
    title = "Payment provider misconfigured"


class SelfDealing(Forbidden):
    """Raised when a debit would pay the channel's own buyer (an account with both roles)."""

    code = "self_dealing"
    title = "A channel cannot pay its own buyer"


# -- authorization (api/authz.py) ----------------------------------------------------------
class InsufficientScope(Forbidden):
    """Raised when an API key or OAuth client calls outside its scopes, or when a credential
    would be minted with scopes beyond the caller's own."""

    code = "insufficient_scope"
    title = "Insufficient scope"


class ReauthenticationRequired(Unauthenticated):
    """Raised when a sensitive change needs a recent login (or a current two-factor code)."""

    code = "reauthentication_required"
    title = "Recent login required"


# -- peer-to-peer delivery (docs/protocol.md "Delivery") ----------------------------------------
class DeliveryTokenInvalid(TokenInvalid):
    """Raised when a delivery token is malformed (segments, sizes, nesting, JSON, claim types)."""

    code = "delivery_token_invalid"
    title = "Invalid delivery token"


class DeliveryTokenExpired(DeliveryTokenInvalid):
    """Raised when a delivery token is used after its transfer deadline (``exp``)."""

    code = "delivery_token_expired"
    title = "Delivery token expired"


class DeliveryTokenNotYetValid(DeliveryTokenInvalid):
    """Raised when a delivery token is used before its ``nbf`` (or was issued in the future)."""

    code = "delivery_token_not_yet_valid"
    title = "Delivery token not yet valid"


class DeliveryStartDeadlinePassed(DeliveryTokenInvalid):
    """Raised when a delivery that never started is attempted after the token's ``start_by``."""

    code = "delivery_start_deadline_passed"
    title = "Delivery start deadline passed"


class DeliveryWrongAudience(DeliveryTokenInvalid):
    """Raised when a delivery token names another seller device than the one checking it."""

    code = "delivery_wrong_audience"
    title = "Delivery token for another device"


class DeliveryTokenSignatureInvalid(DeliveryTokenInvalid):
    """Raised when a delivery token's hub signature does not verify (tampered or forged)."""

    code = "delivery_token_signature_invalid"
    title = "Delivery token signature does not verify"


class DeliveryUnknownKid(DeliveryTokenInvalid):
    """Raised when a delivery token names a hub key (``kid``) the verifier does not trust."""

    code = "delivery_unknown_kid"
    title = "Delivery token signed by an unknown key"


class DeliveryWrongTyp(DeliveryTokenInvalid):
    """Raised when a token's header ``typ``/``alg`` is not the delivery token's."""

    code = "delivery_wrong_typ"
    title = "Not a delivery token"


class DeliveryUnknownClaim(DeliveryTokenInvalid):
    """Raised when a delivery token carries a header field or claim the protocol does not define."""

    code = "delivery_unknown_claim"
    title = "Unknown delivery token field"


class DeliveryCnfMismatch(DeliveryTokenInvalid):
    """Raised when the buyer's key does not match the token's ``cnf.jkt`` thumbprint."""

    code = "delivery_cnf_mismatch"
    title = "Buyer key does not match the token"


class DeliveryPossessionFailed(Unauthenticated):
    """Raised when a peer fails to prove its key in the delivery handshake (bad signature or MAC)."""

    code = "delivery_possession_failed"
    title = "Key possession not proven"


class DeliveryTokenBound(Forbidden):
    """Raised when a delivery token (``jti``) is already bound to another buyer key."""

    code = "delivery_token_bound"
    title = "Delivery token already redeemed by another key"


class DeliveryResumeLimit(Forbidden):
    """Raised when a delivery was resumed too often or would serve a byte more than twice."""

    code = "delivery_resume_limit"
    title = "Delivery resume limit reached"


class DeliveryHandshakeFailed(InvalidInput):
    """Raised when a delivery handshake message is malformed, of another version or out of order."""

    code = "delivery_handshake_failed"
    title = "Delivery handshake failed"


class DeliveryClockSkew(DeliveryHandshakeFailed):
    """Raised when a handshake timestamp is more than the allowed skew (30 s) from our clock."""

    code = "delivery_clock_skew"
    title = "Handshake timestamp outside the allowed clock skew"


class FrameInvalid(InvalidInput):
    """Raised when a delivery frame is malformed, too large, tampered, reordered or replayed."""

    code = "frame_invalid"
    title = "Invalid delivery frame"


class StreamTruncated(FrameInvalid):
    """Raised when a delivery stream ends without its final (``TAG_FINAL``) record."""

    code = "stream_truncated"
    title = "Delivery stream truncated"


class BlockHashMismatch(InvalidInput):
    """Raised when a delivered block (or the block hash list) does not match the commitment."""

    code = "block_hash_mismatch"
    title = "Block does not match its committed hash"


class DeliveryObjectChanged(Unavailable):
    """Raised when a registered file changed on disk (size or block hash) or escaped its folder."""

    code = "delivery_object_changed"
    title = "The object on disk no longer matches its commitment"


class DeliveryBusy(Unavailable):
    """Raised when a node refuses a delivery connection because its limits are reached."""

    code = "delivery_busy"
    title = "Node busy"


class ReceiptInvalid(SignatureInvalid):
    """Raised when a delivery receipt or confirmation is malformed or not signed by the expected key."""

    code = "receipt_invalid"
    title = "Invalid delivery receipt or confirmation"


class DeliveryNotServed(NotFound):
    """Raised when a node is asked for a listing it has no registered object for."""

    code = "delivery_not_served"
    title = "This node does not serve that listing"


class DeliverySessionActive(Conflict):
    """Raised when a delivery token already has a transfer running on the node (retry later)."""

    code = "delivery_session_active"
    title = "A transfer for this token is already running"


class DeliveryTimeout(Unavailable):
    """Raised when a delivery peer is idle too long or a transfer outlives its time bound."""

    code = "delivery_timeout"
    title = "Delivery timed out"


# -- purchases and their delivery tokens (domain/model/purchase.py, domain/app/purchases.py) ---
class ListingNotFound(NotFound):
    """Raised when a purchase names a listing that does not exist."""

    code = "listing_not_found"
    title = "Listing not found"


class ListingDelisted(InvalidState):
    """Raised when a purchase names a listing its seller withdrew."""

    code = "listing_delisted"
    title = "Listing delisted"


class OwnListing(SelfDealing):
    """Raised when an account tries to buy one of its own listings (it would pay itself)."""

    code = "own_listing"
    title = "Cannot buy your own listing"


class CurrencyMismatch(InvalidInput):
    """Raised when a listing is priced in another currency than the channel that would pay it."""

    code = "currency_mismatch"
    title = "Listing and channel currencies differ"


class SellerDeviceSuspended(InvalidState):
    """Raised when the device that would deliver a listing is suspended (it cannot deliver)."""

    code = "seller_device_suspended"
    title = "The seller's device is suspended"


class ListingNotDeliverable(InvalidState):
    """Raised when a listing carries no ``delivery`` commitment (object hash, size, blocks):
    no token could tell the buyer's node what to verify."""

    code = "listing_not_deliverable"
    title = "Listing has no delivery commitment"


class PurchaseNotFound(NotFound):
    """Raised when a purchase does not exist or is not visible to the caller."""

    code = "purchase_not_found"
    title = "Purchase not found"


class PurchaseNotRevocable(InvalidState):
    """Raised when revoking a token that was already redeemed, delivered or expired."""

    code = "purchase_not_revocable"
    title = "The delivery token can no longer be revoked"


class RedemptionWrongToken(InvalidInput):
    """Raised when a reported redemption names another token id (``jti``) than the purchase's."""

    code = "redemption_wrong_token"
    title = "Redemption of another token"


class RedemptionWrongDevice(Forbidden):
    """Raised when a redemption is reported for another device than the token's audience."""

    code = "redemption_wrong_device"
    title = "Redemption reported by another device"


class RedemptionKeyMismatch(Conflict):
    """Raised when a redemption names another buyer key than the token's ``cnf`` (or than the
    redemption already recorded)."""

    code = "redemption_key_mismatch"
    title = "Redemption by another buyer key"


class ReceiptWrongSigner(ReceiptInvalid):
    """Raised when a delivery receipt is issued by another key than the seller device's."""

    code = "receipt_wrong_signer"
    title = "Receipt not signed by the seller device"


class ConfirmationWrongSigner(ReceiptInvalid):
    """Raised when a delivery confirmation is signed by another key than the token's ``cnf`` key."""

    code = "confirmation_wrong_signer"
    title = "Confirmation not signed by the buyer's purchase key"


class ReceiptWrongToken(ReceiptInvalid):
    """Raised when a receipt or confirmation is about another purchase, token or object."""

    code = "receipt_wrong_token"
    title = "Receipt or confirmation for another token"


# -- signed traces, node -> hub (domain/model/envelope.py, domain/app/traces.py) -------------
class TraceEnvelopeInvalid(InvalidInput):
    """Raised when a trace envelope is not the closed, bounded structure docs/protocol.md fixes."""

    code = "trace_envelope_invalid"
    title = "Malformed trace envelope"


class TraceSignatureInvalid(SignatureInvalid):
    """Raised when a trace envelope's proof does not verify under its issuer's key."""

    code = "trace_signature_invalid"
    title = "Trace envelope signature does not verify"


class TraceWrongAudience(Forbidden):
    """Raised when a trace envelope is addressed to another hub."""

    code = "trace_wrong_audience"
    title = "Trace envelope for another hub"


class TraceClockSkew(InvalidInput):
    """Raised when a trace envelope's send time is more than 30 s from the hub clock."""

    code = "trace_clock_skew"
    title = "Trace envelope time outside the allowed skew"


class TraceReplayed(TokenReplayed):
    """Raised when a trace envelope's nonce was already used by that device."""

    code = "trace_replayed"
    title = "Trace envelope replayed"


class TraceEntryHashMismatch(TraceEnvelopeInvalid):
    """Raised when an entry's ``entry_hash`` is not the hash of the entry it carries."""

    code = "trace_entry_hash_mismatch"
    title = "Outbox entry hash mismatch"


class TraceChainGap(Conflict):
    """Raised when an outbox entry arrives before its predecessor was recorded (``expected_seq``
    in the problem says where to resume)."""

    code = "trace_chain_gap"
    title = "Outbox entries missing before this one"


class TraceChainFork(Conflict):
    """Raised when an outbox entry contradicts the recorded chain: another hash at a recorded
    ``seq``, or a ``prev_hash`` that is not the recorded predecessor's."""

    code = "trace_chain_fork"
    title = "Outbox chain forked"


# credentials (VC suites): domain/model/vc.py, domain/model/vc_rdfc.py
class UnsupportedCryptosuite(InvalidInput):
    """Raised when a proof names a type or cryptosuite we do not implement exactly (we support
    ``eddsa-jcs-2022``, ``eddsa-rdfc-2022`` and ``Ed25519Signature2020``). Distinct from
    ``signature_invalid``: nothing was checked."""

    code = "unsupported_cryptosuite"
    title = "Unsupported proof type or cryptosuite"


class CredentialContextUnknown(InvalidInput):
    """Raised when a credential canonicalised as RDF names an ``@context`` URL that is not bundled
    (contexts are never fetched)."""

    code = "vc_context_unknown"
    title = "JSON-LD context not bundled"


class CredentialContextMissing(InvalidInput):
    """Raised when a credential's ``@context`` does not define its proof's type (an
    ``Ed25519Signature2020`` proof needs https://w3id.org/security/suites/ed25519-2020/v1), or an
    RDF-canonicalised credential has no ``@context``."""

    code = "vc_context_missing"
    title = "JSON-LD context missing for the proof"


class CredentialUndefinedTerm(InvalidInput):
    """Raised when JSON-LD expansion would drop part of a credential (a term its contexts do not
    define, a relative IRI, ``@direction``), so a signature would not cover it (safe mode)."""

    code = "vc_undefined_term"
    title = "Credential term not defined by its context"


class CredentialControlCharacter(InvalidInput):
    """Raised when a credential to canonicalise as RDF holds a control character other than tab,
    newline or carriage return, DEL, a lone surrogate, or an IRI with a character N-Quads cannot
    carry (pyld 3.3.0 does not escape them as RDFC-1.0 does)."""

    code = "vc_control_character"
    title = "Credential holds a refused character"


class CredentialTooComplex(InvalidInput):
    """Raised when a credential exceeds the canonicalisation limits: size, nesting, statements,
    blank nodes or URDNA2015 hashing work."""

    code = "vc_too_complex"
    title = "Credential too large or complex to canonicalise"


class CredentialNotJsonLd(InvalidInput):
    """Raised when a credential to canonicalise as RDF is not valid JSON-LD."""

    code = "vc_invalid_jsonld"
    title = "Credential is not valid JSON-LD"


# -- audit trail: the Merkle tree over the log, signed tree heads (domain/model/merkle.py,
# domain/model/tree_head.py, domain/app/audit_trail.py) ---------------------------------------
class ProofInvalid(InvalidInput):
    """Raised when a Merkle inclusion or consistency proof does not verify, or has the wrong
    shape (a hash that is not 32 bytes, an index outside the tree, a size 0)."""

    code = "proof_invalid"
    title = "Merkle proof does not verify"


class TreeHeadInvalid(InvalidInput):
    """Raised when a signed tree head (a checkpoint in signed-note form) is malformed, or no
    signature on it verifies under the keys given."""

    code = "tree_head_invalid"
    title = "Signed tree head does not verify"


class TreeHeadNotFound(NotFound):
    """Raised when no signed tree head of the asked size exists (or none has been signed yet)."""

    code = "tree_head_not_found"
    title = "No such signed tree head"


class TreeInconsistent(Conflict):
    """Raised when the log no longer reproduces what the audit tree recorded: a leaf recomputed
    from an event differs from the stored one, or the tree disagrees with a signed head. The
    tree refuses to grow (or to sign) past it, so two inconsistent heads are never signed."""

    code = "tree_inconsistent"
    title = "The log disagrees with the audit tree"


# compute: invoke tokens, metered sessions, receipts (docs/protocol.md "Compute"; domain/model/invoke*.py,
# domain/model/compute.py, node/compute/)
class InvokeTokenInvalid(DeliveryTokenInvalid):
    """Raised when an invoke token is malformed (not a compact JWS, bad JSON, a claim out of range)."""

    code = "invoke_token_invalid"
    title = "Invalid invoke token"


class InvokeTokenExpired(InvokeTokenInvalid):
    """Raised when an invoke token's session deadline (``exp``) has passed."""

    code = "invoke_token_expired"
    title = "Invoke token expired"


class InvokeTokenNotYetValid(InvokeTokenInvalid):
    """Raised when an invoke token's ``iat`` or ``nbf`` lies more than the allowed skew ahead."""

    code = "invoke_token_not_yet_valid"
    title = "Invoke token not valid yet"


class InvokeStartDeadlinePassed(InvokeTokenInvalid):
    """Raised when a session that never started is opened after the token's ``start_by``."""

    code = "invoke_start_deadline_passed"
    title = "Invoke session start deadline passed"


class InvokeWrongAudience(InvokeTokenInvalid):
    """Raised when an invoke token is addressed to another seller device."""

    code = "invoke_wrong_audience"
    title = "Invoke token for another node"


class InvokeTokenSignatureInvalid(InvokeTokenInvalid):
    """Raised when an invoke token's hub signature does not verify."""

    code = "invoke_token_signature_invalid"
    title = "Invoke token signature does not verify"


class InvokeUnknownKid(InvokeTokenInvalid):
    """Raised when an invoke token names a hub key the verifier does not trust."""

    code = "invoke_unknown_kid"
    title = "Invoke token signed by an unknown hub key"


class InvokeWrongTyp(InvokeTokenInvalid):
    """Raised when a token's header is not ``typ: aimarket-invoke+jwt`` with ``alg: EdDSA``."""

    code = "invoke_wrong_typ"
    title = "Not an invoke token"


class InvokeUnknownClaim(InvokeTokenInvalid):
    """Raised when an invoke token carries a header field or claim the protocol does not define."""

    code = "invoke_unknown_claim"
    title = "Unknown invoke token claim"


class InvokeCnfMismatch(InvokeTokenInvalid):
    """Raised when the buyer's key is not the one whose thumbprint the token's ``cnf.jkt`` names."""

    code = "invoke_cnf_mismatch"
    title = "Buyer key does not match the invoke token"


class InvokeHandshakeFailed(DeliveryHandshakeFailed):
    """Raised when an ``aimarket-invoke/1`` handshake message is malformed or out of order."""

    code = "invoke_handshake_failed"
    title = "Invoke handshake failed"


class InvokeClockSkew(InvokeHandshakeFailed):
    """Raised when the peer's handshake timestamp is more than 30 s from our clock."""

    code = "invoke_clock_skew"
    title = "Peer clock outside the allowed skew"


class InvokePossessionFailed(DeliveryPossessionFailed):
    """Raised when a peer does not prove its key in the invoke handshake (signature or MAC)."""

    code = "invoke_possession_failed"
    title = "Proof of possession failed"


class InvokeTokenBound(Forbidden):
    """Raised when an invoke token already bound to one buyer key is presented with another."""

    code = "invoke_token_bound"
    title = "Invoke token bound to another key"


class InvokeNotServed(NotFound):
    """Raised when the node serves no compute asset for the token's listing."""

    code = "invoke_not_served"
    title = "No compute asset for this listing here"


class InvokeUnitMismatch(InvalidState):
    """Raised when the token meters another unit than the node's registered asset."""

    code = "invoke_unit_mismatch"
    title = "Invoke token meters another unit than the asset"


class InvokeSessionActive(Conflict):
    """Raised when a connection for this invoke token is already open (retry when it ends)."""

    code = "invoke_session_active"
    title = "Invoke session already connected"


class InvokeSessionClosed(InvalidState):
    """Raised when the metered session has ended (closed, deadline, budget or limit reached)."""

    code = "invoke_session_closed"
    title = "Invoke session closed"


class InvokeMessageInvalid(FrameInvalid):
    """Raised when a compute message inside the encrypted stream is malformed or unexpected."""

    code = "invoke_message_invalid"
    title = "Malformed compute message"


class BudgetExhausted(InsufficientFunds):
    """Raised when a call could cost more than the session's budget has left; ``extra`` carries
    ``amount_needed_minor`` (the call's most), ``remaining_minor`` and ``shortfall_minor``."""

    code = "budget_exhausted"
    status = 402
    title = "Session budget exhausted"


class InvokeCountersignatureRequired(Conflict):
    """Raised when a call would put more work at risk than the cap rule allows: countersign the
    latest receipt, then retry."""

    code = "invoke_countersignature_required"
    title = "Countersign the latest receipt first"


class InvokeInputRejected(InvalidInput):
    """Raised when the node's safety pre-check refused a call's input (a signed rejection, free)."""

    code = "invoke_input_rejected"
    title = "Input rejected by the safety pre-check"


class InvokeRateLimited(MarketError):
    """Raised when a buyer calls faster than the node's per-buyer rate (a signed rejection, free)."""

    code = "invoke_rate_limited"
    status = 429
    title = "Too many calls"


class InvokeConcurrencyExceeded(MarketError):
    """Raised when a call would exceed the session's concurrent calls (free; retry after one ends)."""

    code = "invoke_concurrency_exceeded"
    status = 429
    title = "Too many concurrent calls"


class ComputeBusy(Unavailable):
    """Raised when the node has no room for another call or connection (free; retry later)."""

    code = "compute_busy"
    title = "Compute node busy"


class InvokeLimitReached(MarketError):
    """Raised when a session limit (bytes in or out, wall clock) is reached; free."""

    code = "invoke_limit_reached"
    status = 413
    title = "Session limit reached"


class InvokeIdleTimeout(Unavailable):
    """Raised when a connection stayed silent, with no call running, longer than the idle limit."""

    code = "invoke_idle_timeout"
    title = "Invoke connection idle"


class InvokeCallFailed(MarketError):
    """Raised (buyer side) when the pipeline failed; its receipt says the call was not billed."""

    code = "invoke_call_failed"
    status = 502
    title = "Pipeline call failed (not billed)"


class InvokeOutputInvalid(InvokeCallFailed):
    """Raised when the pipeline's output broke its declared schema or size; not billed."""

    code = "invoke_output_invalid"
    title = "Pipeline output invalid (not billed)"


class InvokeCallTimeout(InvokeCallFailed):
    """Raised when a call ran past its time limit and was stopped; not billed."""

    code = "invoke_call_timeout"
    status = 504
    title = "Pipeline call timed out (not billed)"


class InvokeCallCancelled(InvokeCallFailed):
    """Raised when a call was cancelled (by the buyer or the session's end) and stopped; not billed."""

    code = "invoke_call_cancelled"
    status = 409
    title = "Pipeline call cancelled (not billed)"


class InvokeReceiptInvalid(ReceiptInvalid):
    """Raised when an invocation receipt is malformed or its amounts do not add up."""

    code = "invoke_receipt_invalid"
    title = "Invalid invocation receipt"


class InvokeReceiptTampered(InvokeReceiptInvalid):
    """Raised when an invocation receipt's proof does not verify under the seller's key."""

    code = "invoke_receipt_tampered"
    title = "Invocation receipt tampered with"


class InvokeUnitPriceChanged(InvokeReceiptInvalid):
    """Raised when a receipt's unit, unit price or currency differs from the invoke token's."""

    code = "invoke_unit_price_changed"
    title = "Receipt unit price differs from the token"


class InvokeReceiptReplayed(InvokeReceiptInvalid):
    """Raised when a receipt is for another session, or its ``seq`` does not increase."""

    code = "invoke_receipt_replayed"
    title = "Invocation receipt replayed"


class InvokeOverBudget(InvokeReceiptInvalid):
    """Raised when a receipt's cumulative amount exceeds the token's budget (or the cap rule)."""

    code = "invoke_over_budget"
    title = "Receipt over the session budget"


class InvokeCountersignatureInvalid(ReceiptInvalid):
    """Raised when a buyer countersignature is malformed, signed by another key, or does not
    match the receipt it names."""

    code = "invoke_countersignature_invalid"
    title = "Invalid countersignature"


class ComputeAssetInvalid(InvalidInput):
    """Raised when a compute manifest is malformed (fields, schemas, metering, limits)."""

    code = "compute_asset_invalid"
    title = "Invalid compute manifest"


class ComputeEntryPointInvalid(ComputeAssetInvalid):
    """Raised when a manifest's ``module:function`` entry point cannot be imported or called."""

    code = "compute_entry_point_invalid"
    title = "Compute entry point unusable"


class ChannelHoldsOpen(InvalidState):
    """Raised when a channel with open holds (metered sessions not yet captured or lapsed)
    would settle: the holds must end first, so no seller's capture is lost."""

    code = "channel_holds_open"
    title = "Channel has open holds"


class UnsignedAllowanceExhausted(InsufficientFunds):
    """Raised when a hold on a chain channel would not fit the unsigned allowance's headroom
    (a capture is charged without a voucher); ``available_minor`` is the headroom."""

    code = "channel_unsigned_allowance_exhausted"
    title = "Unsigned allowance exhausted"


class ListingNotInvocable(InvalidState):
    """Raised when an invocation names a listing that is not a compute listing (a model or
    pipeline metered in one of the compute units)."""

    code = "listing_not_invocable"
    title = "Listing is not a compute listing"


class InvocationNotFound(NotFound):
    """Raised when an invocation does not exist or is not visible to the caller."""

    code = "invocation_not_found"
    title = "Invocation not found"


class InvocationWrongDevice(InvalidState):
    """Raised when a node reports on an invocation whose token names another seller device,
    or a binding to another token or key than the invocation's."""

    code = "invocation_wrong_device"
    title = "Report from another device than the invocation's"


class InvocationChannelExpiring(InvalidState):
    """Raised when the channel expires too soon for a session: the token's deadline plus the
    report grace must end before the channel can settle."""

    code = "invocation_channel_expiring"
    title = "Channel expires too soon for a session"


class LiveStreamsExhausted(Unavailable):
    """Raised when a web worker already serves its maximum of live event streams
    (``GET /v1/stats/live``): the client retries later or on another worker."""

    code = "live_streams_exhausted"
    title = "Too many live streams on this worker"
