"""The wall page: a kiosk view of every machine for a TV on the workshop wall.

The page is three static files shipped inside the package (``shopfloor/hub/web``): no build
step, no CDN, nothing fetched from the internet. It reads the same public API as any other
client (``api/v1/machines`` and the ``api/v1/events`` stream), so this router only serves
files and holds no state.
"""

from __future__ import annotations

import functools
import hashlib
from importlib import resources
from typing import Annotated, Final

from fastapi import APIRouter, Header, HTTPException, Request, Response
from fastapi.responses import RedirectResponse

__all__ = ["router"]

router = APIRouter(include_in_schema=False, tags=["wall"])

_PAGE: Final = "wall.html"
_STATIC: Final = {
    "wall.js": "text/javascript; charset=utf-8",
    "wall.css": "text/css; charset=utf-8",
}
# Always revalidate: after an upgrade the TV must pick up the new page on its next reload,
# and an unchanged file costs only a 304 thanks to the ETag.
_CACHE_CONTROL: Final = "no-cache"


@functools.cache
def _load(name: str) -> tuple[bytes, str]:
    """A packaged file and its ETag, read once: a few kilobytes from the installed package,
    so the first request pays one small local read and every later one none."""
    body = resources.files("shopfloor.hub").joinpath("web", name).read_bytes()
    return body, '"' + hashlib.sha256(body).hexdigest()[:32] + '"'


def _file_response(name: str, media_type: str, if_none_match: str | None) -> Response:
    body, etag = _load(name)
    headers = {"Cache-Control": _CACHE_CONTROL, "ETag": etag}
    if if_none_match is not None and etag in {tag.strip() for tag in if_none_match.split(",")}:
        return Response(status_code=304, headers=headers)
    return Response(content=body, media_type=media_type, headers=headers)


@router.get("/")
async def root(request: Request) -> RedirectResponse:
    """Send a browser that opens the hub's address straight to the wall, keeping ``?token=``."""
    query = request.url.query
    # Relative, so it also works behind a reverse proxy that mounts the hub under a sub-path.
    return RedirectResponse(url="wall" + (f"?{query}" if query else ""), status_code=307)


@router.get("/wall")
async def wall_page(
    if_none_match: Annotated[str | None, Header()] = None,
) -> Response:
    """The wall page itself. Its parameters (``token``, ``site``, ``title``, ``stale``) are
    read by the page's script, not by the server."""
    return _file_response(_PAGE, "text/html; charset=utf-8", if_none_match)


@router.get("/wall/static/{name}")
async def wall_static(
    name: str,
    if_none_match: Annotated[str | None, Header()] = None,
) -> Response:
    """The page's script and style sheet; nothing else is served from here."""
    media_type = _STATIC.get(name)
    if media_type is None:
        raise HTTPException(status_code=404)
    return _file_response(name, media_type, if_none_match)
