"""The API core every transport wraps: core.py (routing, errors, refusals),
auth.py (principals, grants, the token check) and routes.py (one function
per route, registered with the core as the package is imported).
"""

from crate_cli.vault.api import routes  # noqa: F401 - registers the routes
from crate_cli.vault.api.auth import GRANTS, Denials, Principal
from crate_cli.vault.api.core import (
    MAX_RETRIEVE_NAMES,
    ApiCore,
    Call,
    Request,
    Response,
    error_response,
    find_route,
    route_table,
)

__all__ = [
    "GRANTS",
    "MAX_RETRIEVE_NAMES",
    "ApiCore",
    "Call",
    "Denials",
    "Principal",
    "Request",
    "Response",
    "error_response",
    "find_route",
    "route_table",
]
