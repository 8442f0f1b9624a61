"""``aimarket audit check-credential`` and ``sign-credential`` as processes, with the network cut in
the child too: every W3C vector checks, tampered copies are refused in one line with their code,
and the signer reproduces the W3C proofs byte for byte."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from domain.model.keys import SigningKey, b64url
from tests.vc.conftest import load_vectors

ROOT = Path(__file__).resolve().parents[2]
RDFC = load_vectors("vc_di_eddsa_rdfc_2022.json")
ED2020 = load_vectors("vc_ed25519signature2020.json")
JCS = load_vectors("vc_di_eddsa_jcs_2022.json")
PUBLIC = RDFC["keyPair"]["publicKeyMultibase"]
SECRET = RDFC["keyPair"]["secretKeyMultibase"]
# The child process cuts its own network before the CLI runs: a connection or a lookup raises.
CHILD = (
    "import socket, sys\n"
    "def refuse(*a, **k):\n    raise OSError('network access attempted in a credentials command')\n"
    "socket.socket.connect = refuse\nsocket.create_connection = refuse\nsocket.getaddrinfo = refuse\n"
    "from ops.cli import main\nsys.exit(main(sys.argv[1:]))\n"
)


def aimarket(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-c", CHILD, *args], capture_output=True, text=True, cwd=ROOT, env=env,
                          timeout=120, check=False)


def write(tmp_path: Path, name: str, data: Any, mode: int = 0o644) -> str:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else json.dumps(data, indent=2), encoding="utf-8")
    path.chmod(mode)
    return str(path)


def _unsigned(signed: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in signed.items() if k != "proof"}


def test_check_credential_verifies_every_w3c_vector(tmp_path):
    cases = [
        (RDFC["alumni"]["signed"], ["--key", PUBLIC], "eddsa-rdfc-2022"),
        (ED2020["alumni"]["signed"], ["--key", PUBLIC], "Ed25519Signature2020"),
        (JCS["w3c"]["signed"], [], "eddsa-jcs-2022"),
        (RDFC["proofSetChain"]["documents"]["signedProofChain2"], [], "eddsa-rdfc-2022"),
    ]
    for index, (document, extra, suite) in enumerate(cases):
        result = aimarket("audit", "check-credential", write(tmp_path, f"vc{index}.json", document), *extra)
        assert result.returncode == 0, result.stderr
        assert f"suite: {suite}" in result.stdout and "result: verified" in result.stdout
        assert f"issuer: {document['issuer']}" in result.stdout
    context = write(tmp_path, "citizenship.json", RDFC["employ"]["contexts"]["https://w3id.org/citizenship/v4rc1"])
    employ = write(tmp_path, "employ.json", RDFC["employ"]["signed"])
    result = aimarket("audit", "check-credential", employ, "--any-issuer",
                      "--context", f"https://w3id.org/citizenship/v4rc1={context}")
    assert result.returncode == 0, result.stderr
    refused = aimarket("audit", "check-credential", employ, "--any-issuer")  # its context is not bundled
    assert refused.returncode == 1 and "error [vc_context_unknown]" in refused.stderr


def _refused(result: subprocess.CompletedProcess[str], code: str) -> None:
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error [{code}]: "), result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(("name", "mutate", "code"), [
    ("subject value", lambda d: d["credentialSubject"].update(alumniOf="Forged"), "signature_invalid"),
    ("proof option", lambda d: d["proof"].update(proofPurpose="authentication"), "signature_invalid"),
    ("created", lambda d: d["proof"].update(created="2023-02-24T23:36:39Z"), "signature_invalid"),
    ("unknown suite", lambda d: d["proof"].update(cryptosuite="ecdsa-rdfc-2019"), "unsupported_cryptosuite"),
    ("undefined term", lambda d: d.update({"@context": ["https://www.w3.org/ns/credentials/v2"]}), "vc_undefined_term"),
])
def test_check_credential_refuses_tampered_copies(tmp_path, name, mutate, code):
    document = copy.deepcopy(RDFC["alumni"]["signed"])
    mutate(document)
    args = ["--key", PUBLIC] + (["--proof-purpose", "authentication"] if name == "proof option" else [])
    _refused(aimarket("audit", "check-credential", write(tmp_path, "vc.json", document), *args), code)


def test_check_credential_refuses_a_swapped_key_and_junk(tmp_path):
    other = SigningKey.from_seed(bytes(32)).verify_key.to_multibase()
    _refused(aimarket("audit", "check-credential", write(tmp_path, "vc.json", ED2020["alumni"]["signed"]),
                      "--key", other), "signature_invalid")
    _refused(aimarket("audit", "check-credential", write(tmp_path, "junk.json", "{not json")), "invalid_input")
    _refused(aimarket("audit", "check-credential", str(tmp_path / "missing.json")), "invalid_input")


def _key_files(tmp_path: Path) -> list[str]:
    key = SigningKey.from_multibase(SECRET)
    jwk = {"kty": "OKP", "crv": "Ed25519", "x": b64url(key.verify_key.to_bytes()), "d": b64url(key.export_seed())}
    return [write(tmp_path, "keypair.json", RDFC["keyPair"], 0o600), write(tmp_path, "key.txt", SECRET + "\n", 0o600),
            write(tmp_path, "key.jwk", jwk, 0o600)]


@pytest.mark.parametrize(("vector", "suite"), [(RDFC["alumni"]["signed"], "eddsa-rdfc-2022"),
                                               (ED2020["alumni"]["signed"], "Ed25519Signature2020"),
                                               (JCS["w3c"]["signed"], "eddsa-jcs-2022")])
def test_sign_credential_reproduces_the_w3c_proofs(tmp_path, vector, suite):
    unsigned = write(tmp_path, "unsigned.json", _unsigned(vector))
    outputs = []
    for key_file in _key_files(tmp_path):
        result = aimarket("audit", "sign-credential", unsigned, "--key-file", key_file, "--suite", suite,
                          "--created", vector["proof"]["created"],
                          "--verification-method", vector["proof"]["verificationMethod"])
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout) == vector
        outputs.append(result.stdout)
    assert len(set(outputs)) == 1  # deterministic given created, whatever the key file's form


def test_sign_then_check_each_suite_a_proof_set_and_a_chain(tmp_path):
    key_file = _key_files(tmp_path)[0]
    unsigned = _unsigned(ED2020["alumni"]["signed"])  # has the ed25519-2020 context: fits every suite
    unsigned["issuer"] = f"did:key:{PUBLIC}"
    path = write(tmp_path, "unsigned.json", unsigned)
    for suite in ("eddsa-jcs-2022", "eddsa-rdfc-2022", "Ed25519Signature2020"):
        out = str(tmp_path / f"{suite}.json")
        signed = aimarket("audit", "sign-credential", path, "--key-file", key_file, "--suite", suite,
                          "--created", "2025-06-01T10:00:00Z", "--nonce", "n-1", "--out", out)
        assert signed.returncode == 0, signed.stderr
        checked = aimarket("audit", "check-credential", out)
        assert checked.returncode == 0 and f"suite: {suite}" in checked.stdout, checked.stderr
    first = str(tmp_path / "first.json")
    assert aimarket("audit", "sign-credential", path, "--key-file", key_file, "--suite", "eddsa-rdfc-2022",
                    "--created", "2025-06-01T10:00:00Z", "--proof-id", "urn:uuid:p1", "--out", first).returncode == 0
    chained = str(tmp_path / "chained.json")
    result = aimarket("audit", "sign-credential", first, "--key-file", key_file, "--suite", "eddsa-rdfc-2022",
                      "--created", "2025-06-01T10:00:01Z", "--previous-proof", "urn:uuid:p1", "--out", chained)
    assert result.returncode == 0, result.stderr
    checked = aimarket("audit", "check-credential", chained)
    assert checked.returncode == 0 and "proof 2: suite: eddsa-rdfc-2022" in checked.stdout, checked.stderr
    document = json.loads(Path(chained).read_text())
    document["proof"][0]["created"] = "2025-06-01T10:00:02Z"  # the chained proof signed the first one
    _refused(aimarket("audit", "check-credential", write(tmp_path, "broken.json", document)), "signature_invalid")


def test_sign_credential_refusals(tmp_path):
    unsigned = write(tmp_path, "unsigned.json", _unsigned(RDFC["alumni"]["signed"]))
    readable = write(tmp_path, "open.txt", SECRET, 0o644)
    result = aimarket("audit", "sign-credential", unsigned, "--key-file", readable, "--suite", "eddsa-rdfc-2022")
    assert result.returncode == 2 and "error [invalid_input]" in result.stderr and "chmod 600" in result.stderr
    key_file = _key_files(tmp_path)[0]
    result = aimarket("audit", "sign-credential", unsigned, "--key-file", key_file, "--suite", "ecdsa-rdfc-2019")
    assert result.returncode == 2 and result.stderr.startswith("error [unsupported_cryptosuite]")
    undefined = write(tmp_path, "undefined.json", {**_unsigned(RDFC["alumni"]["signed"]),
                                                   "@context": ["https://www.w3.org/ns/credentials/v2"]})
    result = aimarket("audit", "sign-credential", undefined, "--key-file", key_file, "--suite", "Ed25519Signature2020")
    assert result.returncode == 2 and result.stderr.startswith("error [vc_context_missing]")
    result = aimarket("audit", "sign-credential", undefined, "--key-file", key_file, "--suite", "eddsa-rdfc-2022")
    assert result.returncode == 2 and result.stderr.startswith("error [vc_undefined_term]")
    assert "Traceback" not in result.stderr
