"""JSON-LD context documents bundled with the pure model, so credentials canonicalise offline.

RDF dataset canonicalisation (``domain.model.vc_rdfc``) must resolve every ``@context`` URL a
credential names. They are served from this read-only table and nothing else: a URL not in it is
refused (``vc_context_unknown``), never fetched. The documents are Python data rather than JSON
files because the pure model does no file I/O (ADR 0006). Each module names where its copy
came from.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from domain.model.vc_contexts import (
    aimarket_delivery_v1,
    credentials_examples_v2,
    credentials_v1,
    credentials_v2,
    data_integrity_v2,
    did_v1,
    ed25519_2020_v1,
    multikey_v1,
    security_v1,
    security_v2,
)

_MODULES = (
    credentials_v1, credentials_v2, credentials_examples_v2, security_v1, security_v2, ed25519_2020_v1,
    data_integrity_v2, multikey_v1, did_v1, aimarket_delivery_v1,
)

BUNDLED_CONTEXTS: Mapping[str, Mapping[str, Any]] = MappingProxyType({m.URL: m.DOCUMENT for m in _MODULES})
"""Context URL -> its document. Treat the documents as read-only."""

CREDENTIALS_V1 = credentials_v1.URL
CREDENTIALS_V2 = credentials_v2.URL
ED25519_2020_V1 = ed25519_2020_v1.URL
DATA_INTEGRITY_V2 = data_integrity_v2.URL
