"""RDF dataset canonicalisation of a JSON-LD credential, offline and in safe mode.

``eddsa-rdfc-2022`` and ``Ed25519Signature2020`` sign the canonical N-Quads of a document
(JSON-LD 1.1 expansion, then RDF Dataset Canonicalization RDFC-1.0, which is URDNA2015). pyld
3.3.0 does both; what it does not do is added here, before, around or after its calls:

* **Offline**: every ``@context`` URL is served from :data:`BUNDLED_CONTEXTS` (plus any
  documents the caller passes in ``contexts``); any other URL is refused with
  :class:`CredentialContextUnknown`. pyld's default loader (which would fetch the URL) is never
  reachable: the loader and the context resolver are always passed explicitly.
* **URDNA2015 by name**: pyld's default is the older URGNA2012, and it refuses "RDFC-1.0".
* **Safe mode**: JSON-LD silently drops what a context does not define, so a signature would
  not cover it and it could be changed freely. Refused with :class:`CredentialUndefinedTerm`:
  a property that expands to no absolute IRI, a type or node id that stays a relative IRI,
  ``@direction`` (not in the RDF output without an ``rdfDirection`` mode), and a top-level value
  that is no node.
* **N-Quads escaping**: pyld escapes only backslash, tab, newline, carriage return and the
  double quote. Any other C0 control character, DEL or a lone surrogate in a string, and any
  character an IRI may not hold in N-Quads (space, ``<>"{}|^`\\``), are refused
  (:class:`CredentialControlCharacter`): otherwise two different graphs could serialise alike.
* **Work limits** (pyld has none): the document's size, nesting, quad and blank-node counts,
  and the number of n-degree hashing steps URDNA2015 may take on a crafted graph
  (:class:`CredentialTooComplex`).

Pure: no I/O; the documents are Python data (``domain.model.vc_contexts``).
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Mapping
from typing import Any

from cachetools import LRUCache
from pyld.canon import URDNA2015
from pyld.context_resolver import ContextResolver
from pyld.jsonld import JsonLdError, JsonLdProcessor

from domain.model.errors import (
    CredentialContextUnknown,
    CredentialControlCharacter,
    CredentialNotJsonLd,
    CredentialTooComplex,
    CredentialUndefinedTerm,
)
from domain.model.vc_contexts import BUNDLED_CONTEXTS

MAX_DOCUMENT_BYTES = 256 * 1024
MAX_DEPTH = 32
MAX_QUADS = 4096
MAX_BLANK_NODES = 256
# Calls to URDNA2015's n-degree hashing (and its related-node hashing). A credential whose blank
# nodes all differ in their first-degree hash needs none; a crafted graph of look-alike blank
# nodes needs factorially many.
MAX_HASH_STEPS = 20_000

_FORBIDDEN_TEXT = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ud800-\udfff]")
_FORBIDDEN_IRI = re.compile(r'[\x00-\x20<>"{}|^`\\\x7f\ud800-\udfff]')
_ABSOLUTE_IRI = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*:")


def _check_text(text: str, where: str) -> None:
    bad = _FORBIDDEN_TEXT.search(text)
    if bad:
        raise CredentialControlCharacter(
            f"{where} holds the control character U+{ord(bad.group()):04X}, which the canonical form cannot carry "
            "safely; only tab, newline and carriage return are allowed")


def check_json(document: Any) -> None:
    """Check the raw JSON before any JSON-LD processing: nesting, strings, numbers, size.

    Raises:
        CredentialTooComplex: nested deeper than :data:`MAX_DEPTH` or larger than
            :data:`MAX_DOCUMENT_BYTES` once serialised.
        CredentialControlCharacter: a key or string holds a refused character.
        CredentialNotJsonLd: a number is not finite, or a value is not JSON.
    """
    stack: list[tuple[Any, int, str]] = [(document, 0, "$")]
    while stack:
        value, depth, where = stack.pop()
        if depth > MAX_DEPTH:
            raise CredentialTooComplex(f"the credential nests deeper than {MAX_DEPTH} levels")
        if isinstance(value, dict):
            for name, item in value.items():
                if not isinstance(name, str):
                    raise CredentialNotJsonLd("object keys must be strings")
                _check_text(name, f"the key {where}.{name[:40]!r}")
                stack.append((item, depth + 1, f"{where}.{name[:40]}"))
        elif isinstance(value, list):
            stack.extend((item, depth + 1, f"{where}[{i}]") for i, item in enumerate(value))
        elif isinstance(value, str):
            _check_text(value, where)
        elif isinstance(value, float):
            if value != value or value in (float("inf"), float("-inf")):
                raise CredentialNotJsonLd(f"{where} is not a finite number")
        elif not (value is None or isinstance(value, (bool, int))):
            raise CredentialNotJsonLd(f"{where} is not a JSON value")
    size_bytes = len(json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode("utf-8", "surrogatepass"))
    if size_bytes > MAX_DOCUMENT_BYTES:
        raise CredentialTooComplex(f"the credential is {size_bytes} bytes; at most {MAX_DOCUMENT_BYTES} are canonicalised")


class _Loader:
    """Serves context documents from a fixed table; remembers a URL it had to refuse."""

    def __init__(self, table: Mapping[str, Mapping[str, Any]]) -> None:
        self.table = table
        self.refused: str | None = None

    def __call__(self, url: str, options: dict[str, Any] | None = None) -> dict[str, Any]:
        document = self.table.get(url)
        if document is None:
            self.refused = url
            raise CredentialContextUnknown(f"the @context {url!r} is not bundled; contexts are never fetched")
        # pyld may keep and annotate what it is given: hand it a copy, never the table's own.
        return {"contentType": "application/ld+json", "contextUrl": None, "documentUrl": url,
                "document": copy.deepcopy(dict(document))}


class _BoundedURDNA2015(URDNA2015):
    """pyld's URDNA2015 with a ceiling on its n-degree hashing (pyld 3.3.0 has none)."""

    def __init__(self, max_steps: int) -> None:
        super().__init__()
        self.steps_left = max_steps

    def _step(self) -> None:
        self.steps_left -= 1
        if self.steps_left < 0:
            raise CredentialTooComplex("canonicalising this credential's blank nodes takes too much work")

    def hash_n_degree_quads(self, id_: str, issuer: Any) -> Any:
        self._step()
        return super().hash_n_degree_quads(id_, issuer)

    def hash_related_blank_node(self, related: str, quad: Any, issuer: Any, position: str) -> Any:
        self._step()
        return super().hash_related_blank_node(related, quad, issuer, position)


def _relative(value: Any) -> bool:
    """True for what is no absolute IRI or blank node id (RDF conversion drops such a triple)."""
    if not isinstance(value, str) or not (value.startswith("_:") or _ABSOLUTE_IRI.match(value)):
        return True
    if _FORBIDDEN_IRI.search(value):
        # pyld would drop an IRI with white space and serialise one with <>"{}|^`\ ambiguously.
        raise CredentialControlCharacter(f"the IRI {value[:80]!r} holds a character N-Quads cannot carry")
    return False


def _check_expanded(expanded: list[Any]) -> None:
    """Refuse what expansion kept but RDF conversion would drop without a word."""
    for top in expanded:
        if not isinstance(top, dict) or "@value" in top or "@list" in top:
            raise CredentialUndefinedTerm("a top-level value that is no node is not signed")
    stack: list[Any] = list(expanded)
    while stack:
        node = stack.pop()
        if isinstance(node, list):
            stack.extend(node)
            continue
        if not isinstance(node, dict):
            continue
        if "@direction" in node:
            raise CredentialUndefinedTerm("@direction is not carried into the signed RDF; leave it out")
        if "@value" in node:
            datatype = node.get("@type")
            if datatype is not None and datatype != "@json" and _relative(datatype):
                raise CredentialUndefinedTerm(f"the datatype {datatype!r} is not an absolute IRI")
            continue  # a literal: its value is checked in the dataset
        if "@id" in node and _relative(node["@id"]):
            raise CredentialUndefinedTerm(f"the id {node['@id']!r} is not an absolute IRI")
        for value in node.get("@type", []):
            if _relative(value) or str(value).startswith("_:"):
                raise CredentialUndefinedTerm(f"the type {value!r} is not defined by the credential's @context")
        for name, value in node.items():
            if name not in ("@id", "@type"):
                stack.append(value)


def _check_dataset(dataset: dict[str, list[dict[str, Any]]]) -> None:
    quads = 0
    blank_nodes: set[str] = set()
    for graph_name, triples in dataset.items():
        if graph_name.startswith("_:"):
            blank_nodes.add(graph_name)
        for triple in triples:
            quads += 1
            for position in ("subject", "predicate", "object"):
                term = triple[position]
                if term["type"] == "blank node":
                    blank_nodes.add(term["value"])
                elif term["type"] == "IRI":
                    if _FORBIDDEN_IRI.search(term["value"]):
                        raise CredentialControlCharacter(f"the IRI {term['value'][:80]!r} holds a character N-Quads "
                                                         "cannot carry")
                else:
                    _check_text(term["value"], "a literal")
                    if _FORBIDDEN_IRI.search(term.get("datatype", "")):
                        raise CredentialControlCharacter("a datatype IRI holds a character N-Quads cannot carry")
    if quads > MAX_QUADS:
        raise CredentialTooComplex(f"the credential makes {quads} statements; at most {MAX_QUADS} are canonicalised")
    if len(blank_nodes) > MAX_BLANK_NODES:
        raise CredentialTooComplex(f"the credential has {len(blank_nodes)} blank nodes; at most {MAX_BLANK_NODES}")


def canonical_nquads(document: dict[str, Any], *, contexts: Mapping[str, Mapping[str, Any]] | None = None) -> str:
    """The RDFC-1.0 (URDNA2015) canonical N-Quads of a JSON-LD document, in safe mode.

    Args:
        document: a JSON-LD object with an ``@context``.
        contexts: extra context documents by URL, beside :data:`BUNDLED_CONTEXTS` (a caller's
            own vocabulary; they win over a bundled one of the same URL).

    Raises:
        CredentialContextUnknown, CredentialUndefinedTerm, CredentialControlCharacter,
        CredentialTooComplex, CredentialNotJsonLd (all ``InvalidInput``).
    """
    if not isinstance(document, dict):
        raise CredentialNotJsonLd("a credential must be a JSON object")
    check_json(document)
    loader = _Loader({**BUNDLED_CONTEXTS, **(contexts or {})})
    dropped: list[Any] = []
    processor = JsonLdProcessor(on_property_dropped=dropped.append)
    # A fresh resolver cache per call: pyld's shared one is keyed by URL alone (a caller's
    # context could shadow another's) and is not safe to share between threads.
    options: dict[str, Any] = {
        "documentLoader": loader, "contextResolver": ContextResolver(LRUCache(maxsize=64), loader),
        # No base IRI: a relative id stays relative (and is refused) instead of being resolved against
        # pyld's stand-in base http://example.org/base/.
        "base": None, "processingMode": "json-ld-1.1", "extractAllScripts": False,
    }
    try:
        expanded = processor.expand(document, dict(options))
        if dropped:
            names = sorted({str(name) for name in dropped})[:5]
            raise CredentialUndefinedTerm(f"terms not defined by the credential's @context would go unsigned: {names}")
        _check_expanded(expanded)
        dataset = processor.to_rdf(expanded, dict(options))
    except JsonLdError as exc:
        if loader.refused is not None:
            raise CredentialContextUnknown(
                f"the @context {loader.refused!r} is not bundled; contexts are never fetched") from None
        raise CredentialNotJsonLd(f"not valid JSON-LD: {_root_cause(exc)}") from None
    _check_dataset(dataset)
    return _BoundedURDNA2015(MAX_HASH_STEPS).main(dataset, {"format": "application/n-quads"})


def _root_cause(exc: BaseException) -> str:
    while exc.__cause__ is not None and isinstance(exc.__cause__, JsonLdError):
        exc = exc.__cause__
    return str(getattr(exc, "message", None) or exc).splitlines()[0][:200]

