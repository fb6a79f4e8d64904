"""The live page (docs/ui.md): static files served at ``/`` by a store owner's app, behind the API's guard.

The page is plain HTML and JavaScript in ``static/``; its charts (uPlot) and tables (Tabulator) come from npm at
the versions of ``package-lock.json`` and are copied into ``static/vendor`` at build time (``make ui-assets``), so
the page loads nothing from the network. Every response carries a Content-Security-Policy that allows scripts,
styles and requests of the page's own origin only.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Final
from urllib.parse import quote

log = logging.getLogger(__name__)

STATIC: Final = Path(__file__).parent / "static"
VENDOR_FILES: Final = ("uPlot.iife.min.js", "uPlot.min.css", "tabulator.min.js", "tabulator_simple.min.css")
_CSP: Final = (b"default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
               b"connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'")


def page_url(api_url: str, token: str) -> str:
    """The address to open: the server's URL with the access token, which the page trades for a cookie."""
    return f"{api_url}/?token={quote(token, safe='')}"


def missing_assets() -> list[str]:
    """The browser libraries ``make ui-assets`` has not copied into the package (empty when it has)."""
    return [name for name in VENDOR_FILES if not (STATIC / "vendor" / name).is_file()]


def mount(app: Any) -> None:
    """Serve ``static/`` at ``/`` of the FastAPI ``app`` (after its API routes), with the page's security headers."""
    from starlette.staticfiles import StaticFiles

    missing = missing_assets()
    if missing:
        log.warning("the live page lacks its browser libraries (%s): run `make ui-assets` (needs npm) in the "
                    "source tree, or install a built wheel", ", ".join(missing))
    files = StaticFiles(directory=STATIC, html=True)

    async def page(scope: Any, receive: Any, send: Any) -> None:
        async def with_headers(message: Any) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"content-security-policy", _CSP),
                                      (b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"no-referrer"),
                                      (b"cache-control", b"private, no-cache")]
            await send(message)

        await files(scope, receive, with_headers)

    app.mount("/", page, name="ui")
