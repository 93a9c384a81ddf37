"""The service's live dashboard: one HTML page at ``GET /dashboard``, plain JS, no build step.

The page (``static/dashboard.html``) asks for the API key (kept in the browser's localStorage,
or taken from ``?key=``) and then polls the JSON API every ~2 s with ``X-API-Key``:
``GET /budget`` for the budget gauge and ``GET /experiments`` for the queue table, the live
validation-loss curves and the IsoFLOP view. Everything is drawn as inline SVG by the page
itself: nothing is fetched from the internet at run time.

The page itself needs no key (it holds no data); every number it shows comes from the
authenticated API, so a user sees only their own experiments.
"""

from __future__ import annotations

from importlib import resources

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

router = APIRouter()


def dashboard_html() -> str:
    """The dashboard page (UTF-8 HTML with inline CSS and JS)."""
    return (resources.files("lmforge.scaling.service") / "static" / "dashboard.html").read_text(
        encoding="utf-8")


@router.get("/dashboard", response_class=HTMLResponse, include_in_schema=False)
def dashboard() -> HTMLResponse:
    """Serve the dashboard page; it fetches its data from the JSON API with the user's key."""
    return HTMLResponse(dashboard_html(), headers={"Cache-Control": "no-store"})
