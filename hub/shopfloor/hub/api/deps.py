"""Dependencies: the running hub, and bearer-token checks by scope."""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Awaitable, Callable, Sequence
from typing import Annotated, Final

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from shopfloor.hub.config import ApiToken, Scope
from shopfloor.hub.runtime import Hub

_bearer = HTTPBearer(auto_error=False, description="a token from [[api.tokens]]")


#: Ids and cursors are 64-bit in both stores; a larger number names nothing (and would
#: overflow SQLite's integer binding), so it is refused as invalid.
MAX_ID: Final = 2**63 - 1
_CURSOR: Final = re.compile(r"[0-9]{1,19}")


def cursor_id(cursor: str) -> int | None:
    """The id in a cursor this API gave out (ASCII digits, at most :data:`MAX_ID`); None
    for anything else. ``str.isdigit`` is not enough: it is True for "²", which ``int``
    refuses."""
    if _CURSOR.fullmatch(cursor) is None:
        return None
    value = int(cursor)
    return value if value <= MAX_ID else None


def get_hub(request: Request) -> Hub:
    hub: Hub = request.app.state.hub
    return hub


HubDep = Annotated[Hub, Depends(get_hub)]


def find_token(tokens: Sequence[ApiToken], presented: str) -> ApiToken | None:
    """The configured token whose hash matches, comparing every hash in constant time."""
    digest = hashlib.sha256(presented.encode()).hexdigest()
    found = None
    for token in tokens:
        if hmac.compare_digest(digest, token.sha256):
            found = token
    return found


def _challenge(error: str | None = None) -> dict[str, str]:
    value = 'Bearer realm="shopfloor"'
    if error:
        value += f', error="{error}"'
    return {"WWW-Authenticate": value}


def require(
    scope: Scope, *, query_param: str | None = None
) -> Callable[..., Awaitable[ApiToken | None]]:
    """A dependency that lets a request through if no tokens are configured, or if it
    carries a token with ``scope``. ``query_param`` also accepts the token in the query
    (for EventSource, which cannot send headers)."""

    async def check(
        request: Request,
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    ) -> ApiToken | None:
        tokens = request.app.state.config.api.tokens
        if not tokens:
            return None
        presented = credentials.credentials if credentials else None
        if presented is None and query_param is not None:
            presented = request.query_params.get(query_param)
        if not presented:
            raise HTTPException(
                status.HTTP_401_UNAUTHORIZED,
                detail="this hub needs a bearer token: send 'Authorization: Bearer <token>'",
                headers=_challenge(),
            )
        token = find_token(tokens, presented)
        if token is None:
            raise HTTPException(
                status.HTTP_401_UNAUTHORIZED,
                detail="the bearer token is not known to this hub",
                headers=_challenge("invalid_token"),
            )
        if not token.allows(scope):
            raise HTTPException(
                status.HTTP_403_FORBIDDEN,
                detail=f"token {token.name!r} lacks the {scope} scope",
                headers=_challenge("insufficient_scope"),
            )
        return token

    return check


ReadToken = Annotated[ApiToken | None, Depends(require(Scope.READ))]
ReadStreamToken = Annotated[
    ApiToken | None, Depends(require(Scope.READ, query_param="access_token"))
]
WriteToken = Annotated[ApiToken | None, Depends(require(Scope.WRITE))]
AdminToken = Annotated[ApiToken | None, Depends(require(Scope.ADMIN))]
