"""The CPU-bound half of the signature audit (``ops.signature_audit``): checking signatures.

The walk over the log decides *which key* must have signed *what* (key state is sequential:
enrolments, rotations, suspensions, keyring rotations); each decision becomes a job, a plain
tuple that pickles cheaply, and the jobs are checked here, in batches, on a process pool
(both cores) or inline for a small log. A job is ``(position, topic, what, kind, payload,
key)``; a check answers None (it verifies) or why not. Kinds:

* ``ed25519``: ``payload = (message, signature)``, raw Ed25519 under ``key`` (32 bytes);
* ``vc``: ``payload = (credential, expected_digest | None, outbox_entry: bool)``: an
  eddsa-jcs-2022 proof under ``key``; the credential's SRI digest must be the one recorded
  (listings, receipts); an outbox entry (a trace envelope) must also carry the hash of its entry;
* ``envelope``: ``payload = state``, the stored event's JSON bytes as the log holds them: the
  trace envelope (its ``envelope`` member, parsed here) is checked as a ``vc`` outbox entry.
  The walk hands over bytes, not the decoded dict: nothing to copy or pickle in the parent, and
  the signed document is the stored one (a ``_type_`` object the mapper would turn into a UUID
  stays the object it is, which no device signed);
* ``voucher``: ``payload = (chain_id, contract, chain_channel_id, cumulative_minor,
  signature_hex)``, EIP-712 recovered and compared with ``key`` (the buyer's wallet address).
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
from collections import deque
from collections.abc import Iterable
from typing import Any

import base58
import orjson

from domain.model.envelope import entry_hash
from domain.model.errors import InvalidInput, MarketError, SignatureInvalid, UnsupportedCryptosuite
from domain.model.invoke_receipts import jcs as fast_jcs
from domain.model.invoke_receipts import signature_from_base58
from domain.model.jcs import sha256_sri
from domain.model.keys import DID_KEY_PREFIX, VerifyKey
from domain.model.vc import DATA_INTEGRITY_PROOF, EDDSA_JCS_2022, issuer_id
from domain.model.vc_datetime import parse_xsd_datetime

Job = tuple[int, str, str, str, Any, Any]
Failure = tuple[int, str, str, str]  # position, topic, what, why

BATCH_JOBS = 1024
IN_FLIGHT_BATCHES = 8  # per worker: bounds memory while the walk runs ahead
POOL_AFTER_JOBS = 4096  # a smaller log is checked inline (starting processes costs ~0.3 s)


def check(job: Job) -> str | None:
    """Check one job; None when it verifies, else what failed (never raises)."""
    _position, _topic, _what, kind, payload, key = job
    try:
        if kind == "ed25519":
            message, signature = payload
            _known(key)[0].verify(message, signature)
        elif kind == "envelope":
            return _check_stored_envelope(payload, key)
        elif kind == "vc":
            return _check_vc(payload, key)
        elif kind == "voucher":
            return _check_voucher(payload, key)
        else:
            return f"unknown check {kind!r}"
    except MarketError as exc:
        return f"{exc.detail} [{exc.code}]"
    except Exception as exc:  # noqa: BLE001 - a malformed event is a finding, not a crash
        return f"not checkable: {type(exc).__name__}: {exc}"
    return None


def _check_vc(payload: Any, key: bytes, jcs: Any = None) -> str | None:
    credential, expected_digest, outbox_entry = payload
    jcs = jcs or _jcs
    _verify_jcs_proof(credential, key, jcs)
    if expected_digest is not None and sha256_sri(jcs(credential)) != expected_digest:
        return "the recorded credential digest is not the digest of the signed credential"
    if outbox_entry:
        entry = credential["credentialSubject"]["entry"]
        body = jcs(entry["body"])
        if entry_hash(bytes.fromhex(entry["prev_hash"]), entry["seq"], entry["kind"], body,
                      entry["created_ms"]).hex() != entry["entry_hash"]:
            return "entry_hash is not the hash of the signed outbox entry"
    return None


def _check_stored_envelope(state: bytes, key: bytes) -> str | None:
    try:
        stored = orjson.loads(state)
    except orjson.JSONDecodeError:  # what orjson refuses (NaN, Infinity) the mapper may accept
        return _check_vc((json.loads(state)["envelope"], None, True), key)
    return _check_vc((stored["envelope"], None, True), key, _jcs_loaded)


_KEYS: dict[bytes, tuple[VerifyKey, str]] = {}  # per process: a key is parsed and point-checked once


def _known(key: bytes) -> tuple[VerifyKey, str]:
    known = _KEYS.get(key)
    if known is None:
        if len(_KEYS) > 100_000:
            _KEYS.clear()
        verify_key = VerifyKey(key)
        known = _KEYS[key] = (verify_key, verify_key.did_key)
    return known


def _verify_jcs_proof(credential: Any, key: bytes, jcs: Any = None) -> None:
    """``verify_credential(credential, expected_key=key, suites=(eddsa-jcs-2022,))`` for a key
    the walk already resolved: the same checks (suite, purpose, the verification method and a
    did:key issuer being that key, the proof's @context being the document's, a canonical
    64-byte proofValue, the signature over SHA-256(JCS(proof options)) || SHA-256(JCS(document)))
    without parsing the key again for every credential. Raises SignatureInvalid / InvalidInput."""
    jcs = jcs or _jcs
    verify_key, did = _known(key)
    proof = credential.get("proof") if isinstance(credential, dict) else None
    if not isinstance(proof, dict) or (proof.get("type"), proof.get("cryptosuite")) != (DATA_INTEGRITY_PROOF,
                                                                                       EDDSA_JCS_2022):
        raise UnsupportedCryptosuite("not an eddsa-jcs-2022 DataIntegrityProof")
    vm, purpose, value = proof.get("verificationMethod"), proof.get("proofPurpose"), proof.get("proofValue")
    if not isinstance(vm, str) or vm.split("#", 1)[0] != did:
        raise SignatureInvalid("proof was made by another key than the expected one")
    if purpose != "assertionMethod":
        raise SignatureInvalid(f"proof purpose {purpose!r} is not 'assertionMethod'")
    issuer = issuer_id(credential)
    if issuer is not None and issuer.startswith(DID_KEY_PREFIX) and issuer != did:
        raise SignatureInvalid("issuer is a different did:key than the proof's key")
    if not isinstance(proof.get("created"), str):
        raise InvalidInput("proof.created must be a string")
    parse_xsd_datetime(proof["created"])
    document = {k: v for k, v in credential.items() if k != "proof"}
    options = {k: v for k, v in proof.items() if k != "proofValue"}
    if "@context" in options:
        if "@context" not in document or not _same_json(options["@context"], document["@context"], jcs):
            raise SignatureInvalid("document @context differs from the signed proof @context")
    elif "@context" in document:
        options["@context"] = document["@context"]
    if not isinstance(value, str):
        raise InvalidInput("proof.proofValue is required and must be a string")
    verify_key.verify(hashlib.sha256(jcs(options)).digest() + hashlib.sha256(jcs(document)).digest(),
                      _proof_value(value))


def _same_json(a: Any, b: Any, jcs: Any) -> bool:
    """``jcs(a) == jcs(b)``; a context is a string or a list of strings, which compare exactly as
    they are (Python's ``==`` would also equate ``1``, ``1.0`` and ``True``: only strings here)."""
    if type(a) is str or type(b) is str:
        return a == b
    if type(a) is list and type(b) is list and all(type(x) is str for x in a) and all(type(x) is str for x in b):
        return a == b
    return jcs(a) == jcs(b)


def _proof_value(text: str) -> bytes:
    if not text.startswith("z") or len(text) > 100:
        raise SignatureInvalid("proofValue is not base58btc multibase")
    try:  # the canonical base58 of 64 bytes, the only form the slow path below accepts too
        return signature_from_base58(text[1:])
    except (ValueError, KeyError):
        pass
    try:
        signature = base58.b58decode(text[1:])
    except ValueError:
        raise SignatureInvalid("proofValue is not valid base58btc") from None
    if len(signature) != 64:  # decoding base58btc then encoding again is the identity: no second form
        raise SignatureInvalid("proofValue is not a 64-byte Ed25519 signature")
    return signature


def _jcs(value: Any) -> bytes:
    """RFC 8785 bytes of ``value``: ``domain.model.invoke_receipts.jcs``, orjson's sorted output
    where that is provably the same (ASCII keys, safe integers, no float), else
    ``domain.model.jcs``. The hub stores no float and no integer beyond 2**53 in a signed
    document (it refuses them); an edited event that holds one is serialised exactly (or
    refused) and so fails its signature, as it should."""
    return fast_jcs(value)


_STRICT = orjson.OPT_SORT_KEYS | orjson.OPT_STRICT_INTEGER


def _jcs_loaded(value: Any) -> bytes:
    """``_jcs`` for a value ``orjson.loads`` made (only dict, list, str, int, float, bool, None):
    orjson's sorted output is RFC 8785 when it is all ASCII (so UTF-16 and byte key order
    agree), holds no backslash (no string needed escaping at all, and every ``"`` delimits a
    string), no float (outside the strings, only a float has a ``.`` or an ``E``, and an ``e``
    that is not the one of ``true`` or ``false``) and no integer beyond 2**53 - 1 (``OPT_STRICT_INTEGER`` refuses it).
    C calls over the bytes instead of a Python walk of the value; anything else: ``_jcs``."""
    try:
        text = orjson.dumps(value, option=_STRICT)
    except orjson.JSONEncodeError:
        return _jcs(value)
    if text.isascii() and b"\\" not in text:
        outside = b" ".join(text.split(b'"')[0::2])  # numbers, true, false, null and punctuation
        if b"." not in outside and b"E" not in outside and outside.count(b"e") == outside.count(
                b"true") + outside.count(b"false"):
            return text
    return _jcs(value)


def _check_voucher(payload: Any, wallet: str) -> str | None:
    from domain.model.voucher import VoucherDomain, verify_voucher  # eth libraries: only when a voucher is met

    chain_id, contract, chain_channel_id, cumulative_minor, signature_hex = payload
    verify_voucher(wallet, VoucherDomain(chain_id, contract), chain_channel_id, cumulative_minor,
                   bytes.fromhex(signature_hex.removeprefix("0x")))
    return None


def check_batch(jobs: list[Job]) -> tuple[int, list[Failure]]:
    """Check a batch; return how many were checked and the failures."""
    failures = []
    for job in jobs:
        why = check(job)
        if why is not None:
            failures.append((job[0], job[1], job[2], why))
    return len(jobs), failures


class Checker:
    """Collects jobs in batches and checks them: inline until ``pool_after_jobs`` jobs were
    seen, then on ``workers`` processes (spawned: the walk holds database connections and
    threads that a fork would copy)."""

    def __init__(self, workers: int | None = None, pool_after_jobs: int = POOL_AFTER_JOBS) -> None:
        self.workers = max(0, min(2, os.cpu_count() or 1) if workers is None else workers)
        self.pool_after_jobs = pool_after_jobs
        self.batch: list[Job] = []
        self.seen = 0
        self.checked = 0
        self.failures: list[Failure] = []
        self._pool: Any = None
        self.pooled = False  # whether the pool was used
        self._pending: deque[Any] = deque()

    def add(self, job: Job) -> None:
        self.batch.append(job)
        self.seen += 1
        if len(self.batch) >= BATCH_JOBS:
            self._flush()

    def _flush(self) -> None:
        batch, self.batch = self.batch, []
        if not batch:
            return
        if self._pool is None and self.workers > 1 and self.seen >= self.pool_after_jobs:
            self._pool = multiprocessing.get_context("spawn").Pool(self.workers)
            self.pooled = True
        if self._pool is None:
            self._collect(check_batch(batch))
            return
        while len(self._pending) >= IN_FLIGHT_BATCHES * self.workers:
            self._collect(self._pending.popleft().get())
        self._pending.append(self._pool.apply_async(check_batch, (batch,)))

    def _collect(self, result: tuple[int, list[Failure]]) -> None:
        count, failures = result
        self.checked += count
        self.failures += failures

    def finish(self) -> list[Failure]:
        """Check what is left; return every failure in log order."""
        self._flush()
        try:
            while self._pending:
                self._collect(self._pending.popleft().get())
        finally:
            self.close()
        return sorted(self.failures)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.terminate()
            self._pool.join()
            self._pool = None


def check_all(jobs: Iterable[Job], workers: int | None = None, pool_after_jobs: int = POOL_AFTER_JOBS
              ) -> list[Failure]:
    """Every failure among ``jobs`` (the benchmark's and the tests' entry)."""
    checker = Checker(workers, pool_after_jobs)
    try:
        for job in jobs:
            checker.add(job)
        return checker.finish()
    finally:
        checker.close()
