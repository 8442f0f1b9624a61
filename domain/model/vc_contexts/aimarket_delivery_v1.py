"""Our own JSON-LD context https://aimarket.dev/ns/delivery/v1 (data, not code).

Delivery receipts and confirmations (``domain.model.receipts``) name it in their ``@context``.
They are signed with ``eddsa-jcs-2022``, which never reads it; it is defined so that the same
credentials can also be secured with an RDF-canonicalised suite (``eddsa-rdfc-2022``,
``Ed25519Signature2020``) without any term being dropped. ``intervals`` is a JSON literal: a
list of ``[start, end)`` pairs has an order and a pairing that plain RDF values would lose.
"""

URL = "https://aimarket.dev/ns/delivery/v1"

_NS = "https://aimarket.dev/ns/delivery#"
_XSD_INTEGER = "http://www.w3.org/2001/XMLSchema#integer"
_TERMS = (
    "purchase_id", "jti", "device_id", "content_hash", "blocks_root", "session", "listing_id", "buyer_jkt",
    "outcome", "confirmation",
)
_INTEGERS = (
    "size_bytes", "listing_version", "seq", "sessions", "bytes_sent", "first_byte_ms", "last_byte_ms",
    "blocks_acked", "blocks_verified", "received_at_ms",
)

DOCUMENT = {
    "@context": {
        "@protected": True,
        "DeliveryReceipt": _NS + "DeliveryReceipt",
        "DeliveryConfirmation": _NS + "DeliveryConfirmation",
        **{name: _NS + name for name in _TERMS},
        **{name: {"@id": _NS + name, "@type": _XSD_INTEGER} for name in _INTEGERS},
        "intervals": {"@id": _NS + "intervals", "@type": "@json"},
    }
}
