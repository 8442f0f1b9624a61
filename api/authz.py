"""Who may call what: one table of every route's needs, enforced in one middleware.

(Filled in by the hardening work: roles and scopes per route, API-key and OAuth scopes,
sessions for sensitive changes. Until then every route authenticates in its responder.)
"""

from __future__ import annotations

from typing import Any

import falcon


class Authorize:
    """Checks each request against the route's declared needs before the responder runs."""

    async def process_resource(self, req: falcon.Request, resp: falcon.Response, resource: Any,
                               params: dict[str, Any]) -> None:
        return None
