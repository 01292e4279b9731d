"""The OpenAPI document served at /openapi.json describes exactly the API core's routes.

Structural checks only (no validator dependency): the version, the set of
operations against `crate_cli.vault.api.route_table()` plus the two routes the HTTP
adapter answers itself, operation ids and responses, path parameters, and that
every $ref points inside the document.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import pytest

from crate_cli.server.app import OPENAPI_PATH
from crate_cli.vault.api import route_table

METHODS = {"get", "put", "post", "delete", "patch", "head", "options", "trace"}
ADAPTER_ROUTES = {("GET", "/healthz"), ("GET", "/openapi.json")}  # answered without a token


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    loaded = json.loads(OPENAPI_PATH.read_text(encoding="utf-8"))
    assert isinstance(loaded, dict)
    return loaded


def operations(document: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in document["paths"].items():
        for method, operation in item.items():
            if method in METHODS:
                yield method.upper(), path, operation


def test_version_and_info(document: dict[str, Any]) -> None:
    assert document["openapi"] == "3.1.0"
    assert document["info"]["title"]
    assert isinstance(document["info"]["version"], str)


def test_operations_are_exactly_the_api_routes(document: dict[str, Any]) -> None:
    documented = [(method, path) for method, path, _ in operations(document)]
    assert len(documented) == len(set(documented))
    core = route_table()
    assert len(core) == len(set(core)), "a route is registered twice"
    assert ADAPTER_ROUTES.isdisjoint(core)
    assert set(documented) == set(core) | ADAPTER_ROUTES
    # Path items hold only operations (and shared parameters or text).
    for path, item in document["paths"].items():
        assert set(item) <= METHODS | {"parameters", "summary", "description"}, path


def test_every_operation_has_an_id_and_responses(document: dict[str, Any]) -> None:
    ids = []
    for method, path, operation in operations(document):
        assert isinstance(operation.get("operationId"), str), (method, path)
        assert re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", operation["operationId"]), (method, path)
        ids.append(operation["operationId"])
        responses = operation.get("responses")
        assert isinstance(responses, dict) and responses, (method, path)
        for status, response in responses.items():
            assert re.fullmatch(r"[1-5][0-9][0-9]|[1-5]XX|default", status), (method, path, status)
            assert "$ref" in response or "description" in response, (method, path, status)
        success = [s for s in responses if s.startswith("2")]
        assert success, f"{method} {path} documents no success response"
    assert len(ids) == len(set(ids)), "operationIds must be unique"


def test_path_parameters_match_the_templates(document: dict[str, Any]) -> None:
    assert list(operations(document))
    for method, path, operation in operations(document):
        in_template = re.findall(r"\{([^{}/]+)\}", path)
        assert len(in_template) == len(set(in_template)), path
        declared = [
            *document["paths"][path].get("parameters", []),
            *operation.get("parameters", []),
        ]
        declared = [resolve(document, p["$ref"]) if "$ref" in p else p for p in declared]
        path_params = [p for p in declared if p.get("in") == "path"]
        assert sorted(p["name"] for p in path_params) == sorted(in_template), (method, path)
        assert all(p.get("required") is True for p in path_params), (method, path)
        names = [(p["name"], p["in"]) for p in declared]
        assert len(names) == len(set(names)), (method, path)


def test_routes_use_the_same_templates_as_the_core() -> None:
    # The core's patterns use {name} segments too, never another syntax (":name", "<name>").
    assert list(route_table())
    for method, path in route_table():
        assert path.startswith("/"), path
        for segment in path.split("/")[1:]:
            assert segment, (method, path)
            assert re.fullmatch(r"[a-z-]+|\{[a-z_]+\}", segment), (method, path, segment)


def test_tokens_are_needed_except_for_health_and_this_document(document: dict[str, Any]) -> None:
    schemes = document["components"]["securitySchemes"]
    for requirement in document["security"]:
        assert set(requirement) <= set(schemes)
    assert any(s.get("type") == "http" and s.get("scheme") == "bearer" for s in schemes.values())
    for method, path, operation in operations(document):
        if (method, path) in ADAPTER_ROUTES:
            assert operation.get("security") == [], (method, path)
        else:
            assert operation.get("security", document["security"]), (method, path)


def resolve(document: dict[str, Any], ref: str) -> Any:
    """A local JSON pointer (RFC 6901) in the document; KeyError/IndexError if dangling."""
    assert ref.startswith("#/"), f"reference outside the document: {ref}"
    node: Any = document
    for raw in ref[2:].split("/"):
        part = raw.replace("~1", "/").replace("~0", "~")
        node = node[int(part)] if isinstance(node, list) else node[part]
    return node


def refs(node: Any, where: str = "#") -> Iterator[tuple[str, str]]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str):
                yield where, value
            else:
                yield from refs(value, f"{where}/{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from refs(value, f"{where}/{i}")


def test_every_ref_resolves_inside_the_document(document: dict[str, Any]) -> None:
    found = list(refs(document))
    assert found, "the document uses no $ref at all"
    for where, ref in found:
        try:
            target = resolve(document, ref)
        except (KeyError, IndexError, ValueError):
            pytest.fail(f"{where}: $ref {ref} does not resolve")
        assert isinstance(target, dict), (where, ref)
    # And every component is used (a stale schema is a sign of drift).
    used = {ref for _, ref in found}
    for kind, members in document["components"].items():
        if kind == "securitySchemes":
            continue
        for name in members:
            assert f"#/components/{kind}/{name}" in used, f"unused component {kind}/{name}"
