"""The wire format of listing credentials: closed JSON Schemas and the unsigned builder.

A node sends a listing (publish, update) or a delisting as a W3C VC 2.0 whose
``credentialSubject`` holds metadata only. Every object is closed
(``additionalProperties: false``) and every string, list and number is bounded, so a node
cannot smuggle data rows in: the only free text is the title, the description and the
tags; column shapes must be masked (``a``/``A``/``9`` and punctuation, see
``EXAMPLE_FORMAT``). The same schemas validate request bodies and document the API.
"""

from __future__ import annotations

from typing import Any

from domain.model.blocks import COMMITMENT_SCHEMA
from domain.model.money import SCALES

VC_CONTEXT = ["https://www.w3.org/ns/credentials/v2", "https://aimarket.dev/ns/listing/v1"]
VC_TYPE_LISTING = "ListingCredential"
VC_TYPE_DELISTING = "DelistingCredential"
PII_KINDS = ("email", "phone", "payment_card", "iban", "national_id", "ip_address", "person_name")

SLUG = {"type": "string", "pattern": "^[a-z0-9][a-z0-9-]{0,39}$"}
LISTING_KEY = {"type": "string", "pattern": "^[A-Za-z0-9._:+/=-]{1,128}$"}
CONTENT_HASH = {"type": "string", "pattern": "^sha256-[A-Za-z0-9+/]{43}=$"}
UUID_TEXT = {"type": "string", "pattern": "^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"}
# A masked shape: no ASCII letter but a/A and no digit but 9, so no raw value fits through.
EXAMPLE_FORMAT = {"type": ["string", "null"], "maxLength": 64, "pattern": "^[^b-zB-Z0-8]*$"}
SHARE = {"type": "number", "minimum": 0, "maximum": 1}
COUNT = {"type": "integer", "minimum": 0, "maximum": 10**15}
SCORE = {"type": "integer", "minimum": 0, "maximum": 100}


def _closed(required: list[str], **props: Any) -> dict[str, Any]:
    return {"type": "object", "required": required, "properties": props, "additionalProperties": False}


COLUMN = _closed(
    ["name", "type"],
    name={"type": "string", "minLength": 1, "maxLength": 128},
    type={"type": "string", "pattern": "^[a-z0-9_]{1,32}$"},
    nullable={"type": "boolean"}, null_share=SHARE, distinct_count=COUNT,
    example_format=EXAMPLE_FORMAT, free_text={"type": "boolean"},
    pii_kind={"type": ["string", "null"], "enum": [*PII_KINDS, None]},
)
PII_SUMMARY = _closed(
    ["verdict", "kinds_detected"],
    verdict={"type": "string", "pattern": "^[a-z_]{1,20}$"},
    kinds_detected={"type": "array", "maxItems": len(PII_KINDS), "uniqueItems": True,
                    "items": {"type": "string", "enum": list(PII_KINDS)}},
    by_kind={"type": "object", "maxProperties": len(PII_KINDS), "propertyNames": {"enum": list(PII_KINDS)},
             "additionalProperties": _closed(["count"], count=COUNT, row_share=SHARE,
                                             columns={"type": "array", "maxItems": 200,
                                                      "items": {"type": "string", "maxLength": 128}})},
)
QUALITY = _closed(
    ["score"], score=SCORE,
    components={"type": "object", "maxProperties": 8, "propertyNames": {"pattern": "^[a-z_]{1,32}$"},
                "additionalProperties": SCORE},
)
# How the object is delivered (optional, so listings published before it stay valid): the hash of
# the delivered file's bytes (for a dataset folder, the listing's content_hash is a hash over
# per-file digests, so the two differ), its size, and the block commitment (domain/model/blocks.py).
DELIVERY = _closed(["object_hash", "size_bytes", "blocks"], object_hash=CONTENT_HASH, size_bytes=COUNT,
                   blocks=COMMITMENT_SCHEMA)
LISTING = _closed(
    ["title", "description", "kind", "category", "tags", "licence", "price_minor", "currency", "content_hash"],
    title={"type": "string", "minLength": 1, "maxLength": 200},
    description={"type": "string", "maxLength": 4000},
    kind={"type": "string", "enum": ["dataset", "model", "pipeline"]},
    category=SLUG,
    tags={"type": "array", "maxItems": 20, "uniqueItems": True, "items": SLUG},
    licence={"type": "string", "pattern": "^[A-Za-z0-9.+-]{1,64}$"},
    price_minor={"type": "integer", "minimum": 0, "maximum": 10**12},
    currency={"type": "string", "enum": sorted(SCALES)},  # what the hub prices in (check_currency)
    content_hash=CONTENT_HASH, size_bytes=COUNT, rows={"type": ["integer", "null"], "minimum": 0},
    columns={"type": "array", "maxItems": 200, "items": COLUMN},
    pii=PII_SUMMARY, quality=QUALITY,
    framework={"type": "string", "maxLength": 64}, metering_unit={"type": "string", "pattern": "^[a-z][a-z0-9_]{0,39}$"},
    max_units_per_call={"type": "integer", "minimum": 1, "maximum": 2**31},  # compute: the most one call counts
    report_version={"type": "integer", "minimum": 0, "maximum": 1000},
    delivery=DELIVERY,
)
PROOF = _closed(
    ["type", "cryptosuite", "created", "verificationMethod", "proofPurpose", "nonce", "proofValue"],
    type={"const": "DataIntegrityProof"}, cryptosuite={"const": "eddsa-jcs-2022"},
    created={"type": "string", "maxLength": 40}, nonce={"type": "string", "minLength": 16, "maxLength": 128},
    verificationMethod={"type": "string", "maxLength": 256}, proofPurpose={"const": "assertionMethod"},
    proofValue={"type": "string", "maxLength": 128},
    **{"@context": {"const": VC_CONTEXT}},
)
_ISSUER = {"type": "string", "pattern": "^did:key:z6Mk[1-9A-HJ-NP-Za-km-z]{40,60}$"}


def _credential(vc_type: str, subject: dict[str, Any]) -> dict[str, Any]:
    return _closed(
        ["@context", "type", "issuer", "validFrom", "credentialSubject", "proof"],
        type={"const": ["VerifiableCredential", vc_type]}, issuer=_ISSUER,
        validFrom={"type": "string", "maxLength": 40}, credentialSubject=subject, proof=PROOF,
        **{"@context": {"const": VC_CONTEXT}},
    )


PUBLISH_CREDENTIAL = _credential(VC_TYPE_LISTING, _closed(
    ["action", "listing_key", "listing"], action={"const": "publish"}, listing_key=LISTING_KEY, listing=LISTING))
UPDATE_CREDENTIAL = _credential(VC_TYPE_LISTING, _closed(
    ["action", "listing_id", "listing"], action={"const": "update"}, listing_id=UUID_TEXT, listing=LISTING))
DELIST_CREDENTIAL = _credential(VC_TYPE_DELISTING, _closed(
    ["action", "listing_id"], action={"const": "delist"}, listing_id=UUID_TEXT,
    reason={"type": "string", "maxLength": 200}))


def unsigned_credential(issuer_did: str, valid_from: str, subject: dict[str, Any]) -> dict[str, Any]:
    """The credential a node signs (``sign_credential``) for one catalogue action.

    Args:
        issuer_did: The device key's ``did:key``.
        valid_from: XMLSchema dateTime in UTC (the same instant as the proof's ``created``).
        subject: ``{"action": "publish", "listing_key", "listing"}``,
            ``{"action": "update", "listing_id", "listing"}`` or
            ``{"action": "delist", "listing_id", "reason"?}``.
    """
    vc_type = VC_TYPE_DELISTING if subject.get("action") == "delist" else VC_TYPE_LISTING
    return {"@context": list(VC_CONTEXT), "type": ["VerifiableCredential", vc_type], "issuer": issuer_did,
            "validFrom": valid_from, "credentialSubject": subject}
