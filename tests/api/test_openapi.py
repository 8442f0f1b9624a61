"""The OpenAPI document covers every route, and a fuzz run from it finds no 5xx and no
response that breaks it (schemathesis, bounded number of cases, embedded store)."""

from __future__ import annotations

from typing import Any

import pytest
import schemathesis
from falcon import testing
from hypothesis import HealthCheck, settings
from schemathesis.checks import positive_data_acceptance

from api.app import create_app
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
    return schemathesis.openapi.from_asgi("/openapi.json", fuzz_app)


schema = schemathesis.pytest.from_fixture("fuzz_schema")


@schema.parametrize()
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
def test_fuzz_api_from_its_own_spec(case, fuzz_app) -> None:
    # positive_data_acceptance is off: a schema-valid body may still break a business rule
    # (scopes beyond your roles, a duplicate e-mail) and get a documented 4xx problem.
    case.call_and_validate(headers=fuzz_app.fuzz_headers, excluded_checks=[positive_data_acceptance])
