"""The OpenAPI document covers every route, and a fuzz run from it finds no 5xx and no
response that breaks it (schemathesis, bounded number of cases, embedded store): with every
check on, so a request valid by the document is not refused with a 4xx other than 401, 403,
404, 409 (positive_data_acceptance) and one invalid by it is refused (negative_data_rejection).

The suite runs 25 cases per operation; ``AIMARKET_FUZZ_EXAMPLES=N`` runs N (the 10,000-case run
recorded in docs/benchmarks.md, "API fuzzing", is ``AIMARKET_FUZZ_EXAMPLES=250``); every case run is
counted and the total printed at the end of the module (``-s``)."""

from __future__ import annotations

import os
import uuid
from typing import Any

import pytest
import schemathesis
from falcon import testing
from hypothesis import HealthCheck, settings

from api.app import create_app
from domain.model.keys import KxPrivateKey, SigningKey
from ops.bootstrap import build_runtime
from tests.helpers import login, register


def router_routes(app: Any) -> set[tuple[str, str]]:
    """Every (template, method) Falcon actually serves, walking the compiled router."""
    found: set[tuple[str, str]] = set()

    def walk(nodes: list[Any]) -> None:
        for node in nodes:
            if node.resource is not None:
                for method, responder in node.method_map.items():
                    # Falcon fills unhandled methods with its own default responders (405, OPTIONS)
                    if not getattr(responder, "__module__", "falcon").startswith("falcon"):
                        found.add((node.uri_template, method.lower()))
            walk(node.children)

    walk(app._router._roots)
    return found


def test_every_route_is_in_the_spec(tmp_path) -> None:
    app = create_app(runtime=build_runtime(_settings(tmp_path)))
    try:
        spec = testing.TestClient(app).simulate_get("/openapi.json").json
        documented = {(path, method) for path, ops in spec["paths"].items() for method in ops}
        served = router_routes(app)
        assert served, "router walk found nothing"
        missing = served - documented
        assert not missing, f"routes missing from /openapi.json: {sorted(missing)}"
        assert spec["openapi"].startswith("3.1")
        for ops in spec["paths"].values():
            for operation in ops.values():
                assert "400" in operation["responses"] and operation["summary"]
    finally:
        app.runtime.close()


def _settings(tmp_path):
    from ops.settings import Settings

    return Settings(data_dir=tmp_path / "fuzz", secret_hex="cd" * 32, bcrypt_rounds=4, hub_url="http://hub.test")


@pytest.fixture(scope="module")
def fuzz_app(tmp_path_factory):
    app = create_app(runtime=build_runtime(_settings(tmp_path_factory.mktemp("fuzz"))))
    client = testing.TestClient(app)
    seller = register(client, "fuzz-seller@example.com", ["seller", "buyer"])
    token = login(client, seller["email"])
    app.fuzz_headers = {"Authorization": f"Bearer {token}"}
    yield app
    app.runtime.close()


@pytest.fixture(scope="module")
def fuzz_schema(fuzz_app):
    schema = schemathesis.openapi.from_asgi("/openapi.json", fuzz_app)
    bearer = fuzz_app.fuzz_headers["Authorization"]

    # The session as schemathesis' own auth, not as extra transport headers: its ignored_auth
    # check then knows the credential is ours and its no-auth probe really sends none (with
    # transport headers the probe could carry the session and report a 200 as "auth ignored").
    @schema.auth()
    class _Session:
        def get(self, case: Any, ctx: Any) -> str:
            return bearer

        def set(self, case: Any, data: str, ctx: Any) -> None:
            case.headers = {**(case.headers or {}), "Authorization": data}

    return schema


schema = schemathesis.pytest.from_fixture("fuzz_schema")


def _whole(value: Any) -> Any:
    """Integral floats spelled as integers, all the way down."""
    if isinstance(value, float) and value.is_integer() and abs(value) <= 2**53:
        return int(value)
    if isinstance(value, dict):
        return {k: _whole(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_whole(v) for v in value]
    return value


# Values a valid request cannot make up from the document: only the hub issues a cursor; a
# device key must decode to an Ed25519 / X25519 key (a schema-valid base58 string mostly does
# not); an e-mail must pass email-validator's rules, which the field describes in prose
# (special-use domains such as .test, ...) beyond JSON Schema's idn-email.
OPAQUE_QUERY = ("cursor",)
MADE_BY_A_CLIENT = {"public_key": lambda: SigningKey.generate().verify_key.to_multibase(),
                    "kx_public_key": lambda: KxPrivateKey.generate().public_key.to_multibase(),
                    "email": lambda: f"fuzz-{uuid.uuid4().hex[:12]}@example.com"}


def _as_a_client_writes_it(case: Any) -> None:
    """Make a positive case what a correct client sends, where JSON Schema cannot say it:

    * integers as integer literals: the hub refuses ``2.0`` where it takes an integer (docs/api.md,
      "Input"), and JSON Schema counts ``2.0`` as an integer, so schemathesis sends it;
    * no made-up cursor, real device keys and e-mails (above): the business rules decide.
    """
    if case.meta is None or not case.meta.generation.mode.is_positive:
        return
    if isinstance(case.body, dict):
        case.body = _whole(case.body)
        case.body.pop("cursor", None)
        for name, make in MADE_BY_A_CLIENT.items():
            if name in case.body:
                case.body[name] = make()
    if case.query:
        case.query = {k: (str(_whole(float(v))) if isinstance(v, float) else v)
                      for k, v in case.query.items() if k not in OPAQUE_QUERY}


FUZZ_EXAMPLES = int(os.environ.get("AIMARKET_FUZZ_EXAMPLES", "25"))
CASES_RUN: dict[str, int] = {}


@pytest.fixture(scope="module", autouse=True)
def _count_cases():
    yield
    total = sum(CASES_RUN.values())
    print(f"\nschemathesis: {total} cases over {len(CASES_RUN)} operations, 0 failures unless reported above")


@schema.parametrize()
@settings(max_examples=FUZZ_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
def test_fuzz_api_from_its_own_spec(case, fuzz_app) -> None:
    _as_a_client_writes_it(case)
    case.call_and_validate()
    label = case.operation.label
    CASES_RUN[label] = CASES_RUN.get(label, 0) + 1
