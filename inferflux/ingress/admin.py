"""The admin HTTP API: /v1/admin/keys, /v1/admin/roles, /v1/admin/limits.

Each route turns the request into one `Admin` message for the policy actor, which checks
the `admin` permission (again: the before_request gate already did) and changes the store;
the change is in force for the next request, on this server, without a restart.

    POST   /v1/admin/keys                {name, scopes, models?, max_tokens?, max_priority?,
                                          max_concurrent?, requests_per_minute?,
                                          tokens_per_minute?}
                                         -> 201, the key (shown once) and its record
    GET    /v1/admin/keys                -> {"object": "list", "data": [records]}
    DELETE /v1/admin/keys/<id or name>   -> the revoked record
    GET    /v1/admin/roles               -> {name: grant}
    PUT    /v1/admin/roles/<name>        {permissions, models?, max_tokens?, max_priority?,
                                          max_concurrent?}
    DELETE /v1/admin/roles/<name>
    GET    /v1/admin/limits              -> {principal: limit}
    PUT    /v1/admin/limits/<principal>  {requests_per_minute, tokens_per_minute}
    DELETE /v1/admin/limits/<principal>  (principal: key:<id>, oidc:<sub>, role:<name>, *)
"""

from __future__ import annotations

from typing import Any

import msgspec
from quart import Blueprint, Response, request

from actors import ActorRef

from ..policy.messages import Admin, AdminOp
from .context import current
from .errors import APIError
from .limits import ADMIN_BODY_BYTES
from .policy_client import api_error, ask_policy


def admin_blueprint(policy: ActorRef) -> Blueprint:
    admin = Blueprint("admin", __name__, url_prefix="/v1/admin")

    async def run(op: AdminOp, name: str = "", with_body: bool = False) -> Response:
        body: Any = None
        if with_body:
            if (request.content_length or 0) > ADMIN_BODY_BYTES:
                raise APIError(
                    413,
                    f"an admin request body is at most {ADMIN_BODY_BYTES} bytes",
                    code="request_too_large",
                )
            raw = await request.get_data(cache=False)
            try:
                body = msgspec.json.decode(raw) if raw else {}
            # Bad UTF-8 raises UnicodeDecodeError (a ValueError), not a DecodeError.
            except (msgspec.DecodeError, ValueError) as exc:
                raise APIError(
                    400, f"request body is not valid JSON: {exc}", code="invalid_json"
                ) from None
        context = current()
        decision = await ask_policy(
            policy,
            Admin(
                credential=context.credential,
                op=op,
                name=name,
                body=body,
                trace_id=context.trace_id,
                client=context.client,
            ),
        )
        if not decision.allowed:
            context.denial = decision
            raise api_error(decision)
        return Response(
            msgspec.json.encode(decision.result),
            status=decision.status,
            content_type="application/json",
        )

    @admin.post("/keys")
    async def create_key() -> Response:
        return await run("keys.create", with_body=True)

    @admin.get("/keys")
    async def list_keys() -> Response:
        return await run("keys.list")

    @admin.delete("/keys/<key>")
    async def revoke_key(key: str) -> Response:
        return await run("keys.revoke", key)

    @admin.get("/roles")
    async def list_roles() -> Response:
        return await run("roles.list")

    @admin.put("/roles/<name>")
    async def put_role(name: str) -> Response:
        return await run("roles.put", name, with_body=True)

    @admin.delete("/roles/<name>")
    async def delete_role(name: str) -> Response:
        return await run("roles.delete", name)

    @admin.get("/limits")
    async def list_limits() -> Response:
        return await run("limits.list")

    @admin.put("/limits/<path:principal>")
    async def put_limit(principal: str) -> Response:
        return await run("limits.put", principal, with_body=True)

    @admin.delete("/limits/<path:principal>")
    async def delete_limit(principal: str) -> Response:
        return await run("limits.delete", principal)

    return admin
