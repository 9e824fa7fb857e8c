"""The registry fuzzed from its own OpenAPI schema (Schemathesis: property-based requests for every route,
generated from FastAPI's /openapi.json): no request, with a device or an admin token, gets a 500."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, settings

EXAMPLES = 25  # per route and token: bounded, so CI stays quick; the seed is fixed (derandomize) for a stable run


@pytest.fixture(scope="module")
def registry_app(tmp_path_factory):
    from ota_support import new_store

    from pocketvision.serve.app import create_app
    from pocketvision.serve.registry import Registry
    store = tmp_path_factory.mktemp("fuzz") / "store"
    tokens = new_store(store)
    return create_app(Registry(store)), tokens


@pytest.fixture(scope="module")
def registry_schema(registry_app):
    return schemathesis.openapi.from_asgi("/openapi.json", registry_app[0])


schema = schemathesis.pytest.from_fixture("registry_schema")


@schema.parametrize()
@settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
          suppress_health_check=list(HealthCheck))
def test_no_request_gets_a_server_error(case, registry_app):
    _, tokens = registry_app
    for role in ("device", "admin"):
        response = case.call(headers={"Authorization": f"Bearer {tokens[role]}"})
        assert response.status_code < 500, (role, case.method, case.formatted_path, response.status_code,
                                            response.text[:300])
