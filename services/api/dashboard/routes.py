"""The dashboard's routes on the API's app: the page, its static files and its JSON, all behind the API key.

Plain Starlette routes (not FastAPI ones): the API's key dependency answers JSON, while a browser without
the key should get the key form; :func:`services.api.dashboard.auth.allowed` applies the same key here.
"""

from __future__ import annotations

import html
import time
from pathlib import Path

from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response

from common.observability.trace import COUNTER_KINDS, SPAN_KINDS
from common.wire.curve import ClientCurve
from services.api.dashboard.auth import KEY_COOKIE, allowed, same
from services.api.dashboard.recorder import Recorder
from services.api.dashboard.state import Board
from services.cli.bench_plot import SPAN_COLOURS

STATIC = Path(__file__).resolve().parent / "static"
FILES = {"app.js": "text/javascript", "style.css": "text/css", "ring.js": "text/javascript",
         "timeline.js": "text/javascript", "chat.js": "text/javascript"}
NO_STORE = {"Cache-Control": "no-store"}
MAX_WINDOW_S = 300.0
KEY_FORM = """<!doctype html><html><head><meta charset="utf-8"><title>flowring</title>
<link rel="stylesheet" href="/dashboard/static/style.css"></head><body class="login"><form method="get" action="/">
<h1>flowring</h1><p>{message}</p><input type="password" name="key" placeholder="API key" autofocus>
<button>Open the dashboard</button></form></body></html>"""


def install(app: FastAPI, *, api_key: str, endpoint: str, curve: ClientCurve | None, model: str,
            recorder: Recorder) -> None:
    """Add ``/``, ``/dashboard/static/{name}``, ``/dashboard/state`` and ``/dashboard/spans`` to ``app``."""
    board = Board(endpoint, curve, recorder, model)

    async def page(request: Request) -> Response:
        given = request.query_params.get("key")
        if given is not None:
            if api_key and not same(given, api_key):
                return _key_form("That is not the API key.", 401)
            back = RedirectResponse("/", status_code=303)  # the key leaves the address bar and the history
            if api_key:
                back.set_cookie(KEY_COOKIE, given, httponly=True, samesite="strict", path="/")
            return back
        if not allowed(request, api_key):
            return _key_form("This dashboard needs the API key (the one `flowring serve --api-key` was given).", 401)
        return FileResponse(STATIC / "index.html", media_type="text/html", headers=NO_STORE)

    async def static(request: Request) -> Response:
        name = request.path_params["name"]
        if name == "style.css":  # the key form needs it too, and it holds nothing about the cluster
            return FileResponse(STATIC / name, media_type=FILES[name])
        if not allowed(request, api_key):
            return _denied()
        if name not in FILES:
            return JSONResponse({"error": {"message": f"no file {name!r}"}}, status_code=404)
        return FileResponse(STATIC / name, media_type=FILES[name], headers=NO_STORE)

    async def state(request: Request) -> Response:
        if not allowed(request, api_key):
            return _denied()
        return JSONResponse(await board.state(), headers=NO_STORE)

    async def spans(request: Request) -> Response:
        if not allowed(request, api_key):
            return _denied()
        try:
            window_s = min(max(float(request.query_params.get("window", "15")), 1.0), MAX_WINDOW_S)
        except ValueError:
            window_s = 15.0
        now = time.time()  # the server's clock, as the spans': the browser's may differ
        body = {"now": now, "span_kinds": list(SPAN_KINDS), "counter_kinds": list(COUNTER_KINDS),
                "colours": SPAN_COLOURS, "requests": recorder.traces(since_s=now - window_s)}
        return JSONResponse(body, headers=NO_STORE)

    app.add_route("/", page, methods=["GET"], include_in_schema=False)
    app.add_route("/dashboard/static/{name}", static, methods=["GET"], include_in_schema=False)
    app.add_route("/dashboard/state", state, methods=["GET"], include_in_schema=False)
    app.add_route("/dashboard/spans", spans, methods=["GET"], include_in_schema=False)


def _key_form(message: str, status: int) -> HTMLResponse:
    return HTMLResponse(KEY_FORM.format(message=html.escape(message)), status_code=status, headers=NO_STORE)


def _denied() -> JSONResponse:
    message = "missing or wrong API key: send 'Authorization: Bearer <key>' or open /?key=<key> once"
    return JSONResponse({"error": {"message": message, "type": "invalid_request_error", "param": None,
                                   "code": "invalid_api_key"}}, status_code=401)
