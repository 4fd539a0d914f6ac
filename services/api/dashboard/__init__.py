"""The live dashboard the API serves at ``/``: the ring, live health and load, a timeline of spans, a chat box.

Static files (``static/``: HTML, JS and CSS, no build step) and three JSON routes under ``/dashboard/``.
The API key guards it as it guards the API: a browser sends it once (``/?key=KEY`` or the page's form) and
then carries it in an HttpOnly, SameSite=Strict cookie, which the API's routes accept too (the chat box
calls ``/v1/chat/completions``). See docs/dashboard.md.
"""

from services.api.dashboard.auth import KEY_COOKIE, TRACE_HEADER, cookie_holds, cookie_key
from services.api.dashboard.recorder import Recorder
from services.api.dashboard.routes import install

__all__ = ["KEY_COOKIE", "TRACE_HEADER", "Recorder", "cookie_holds", "cookie_key", "install"]
