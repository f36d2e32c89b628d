"""The gate every HTTP request to the explorer passes before Panel sees it: the token, and a clean link.

`lfm explore` and `python apps/explorer.py` serve the page behind a `TokenGate`, Bokeh's authentication hook
(`bokeh.server.auth_provider.AuthProvider`; Panel's server runs `get_user` in front of every handler that
makes a session: the page, its websocket, autoload.js). So a request without the token costs a 403 and
nothing else: no session, no state, no evaluation, whatever page or `<img>` tag sent it.

- The token arrives once in the URL that the server printed (`http://127.0.0.1:5006/explorer?token=...`);
  the answer sets a cookie (`lfm-explorer-<port>`: HttpOnly, SameSite=Strict, holding an HMAC of the token,
  so any token text fits in it) and redirects to the same URL without the token, so it stays out of the
  address bar, the history and shared links. Later requests and the websocket carry only the cookie.
  Tokens and cookies are compared with `hmac.compare_digest`.
- A link's settings are cleaned before a session parses them (`state.clean_query`: unknown keys dropped,
  numbers clamped to their bounds, anything unparseable ignored): a page URL that is not clean is answered
  with a redirect to its clean form, a websocket URL that is not clean with a 400. Panel's own parser turns
  `?foo=%C2%B2` or a 4301-digit value into an HTTP 500.

A plain `panel serve apps/explorer.py` runs no lfm code before it makes a session (the script itself runs per
session), so no gate can stand in front of it: there, `app.page` builds a refusal instead of the explorer
(it checks `serving()`, true only in a process whose server was built with a gate: every session such a
server makes passed it), and `make demo` runs `lfm explore`. Bokeh's `--auth-module` could put a gate in
front of `panel serve` too, but only when the user remembers the flag, and without the port the URL and the
cookie need; one command that always has the gate, and a page that refuses to exist without one, leave no
way to a working server without a token.

    >>> page_url("0.0.0.0", 5006, "s3cret")
    'http://127.0.0.1:5006/explorer?token=s3cret'
"""

from __future__ import annotations

import hashlib
import hmac
from urllib.parse import urlencode

from bokeh.server.auth_provider import AuthProvider
from tornado.web import Finish, HTTPError
from tornado.websocket import WebSocketHandler

from .state import clean_query

TOKEN_ARG = "token"  # the query key of the token in the printed URL
REFUSAL = "Forbidden: open the URL with the token that lfm explore printed"  # the 403's status line and page
_serving: TokenGate | None = None  # the gate in front of this process's server (None: no lfm server here)


def serving() -> bool:
    """True in a process whose explorer server was built with a gate (every session it makes passed it)."""
    return _serving is not None


def page_url(address: str, port: int, token: str | None) -> str:
    """The URL to print at start: the page, with the token when there is one."""
    host = "127.0.0.1" if address in ("", "0.0.0.0", "::") else address
    host = f"[{host}]" if ":" in host else host
    return f"http://{host}:{port}/explorer" + (f"?{urlencode({TOKEN_ARG: token})}" if token is not None else "")


class TokenGate(AuthProvider):
    """Bokeh's auth hook holding one token (None: `--no-token`, every request is let in, links still cleaned).

    `get_user` answers a request without the token (or its cookie) with HTTP 403 before any session exists."""

    def __init__(self, token: str | None, *, port: int):
        self.token = token
        self.cookie = f"lfm-explorer-{port}"  # per port: browsers send a host's cookies to all its ports
        self.cookie_value = (hmac.new(token.encode(), b"lfm explorer cookie", hashlib.sha256).hexdigest()
                             if token is not None else "")
        super().__init__()
        global _serving
        _serving = self

    def admits(self, given: str) -> bool:
        return self.token is None or hmac.compare_digest(given.encode(), self.token.encode())

    def admits_cookie(self, given: str) -> bool:
        return self.token is None or hmac.compare_digest(given.encode(), self.cookie_value.encode())

    @property
    def get_user(self):
        return self._user

    @property
    def get_login_url(self):
        return self._refuse  # Bokeh asks for a login page; there is none: no token, no entry

    def _refuse(self, handler):
        raise HTTPError(403, reason=REFUSAL)

    def _user(self, handler) -> str:
        request = handler.request
        query = {key: values[-1].decode("utf-8", "replace") for key, values in request.query_arguments.items()}
        given = query.pop(TOKEN_ARG, None)
        if given is not None and self.admits(given):
            if self.token is not None:
                handler.set_cookie(self.cookie, self.cookie_value, httponly=True, samesite="Strict", path="/")
        elif not self.admits_cookie(handler.get_cookie(self.cookie) or ""):
            self._refuse(handler)
        clean = clean_query(query)
        if isinstance(handler, WebSocketHandler):
            if clean != query:
                raise HTTPError(400, reason="Bad Request: the websocket URL holds settings that are not valid")
        elif given is not None or clean != query:  # the page: to its clean URL, without the token
            handler.redirect(request.path + (f"?{urlencode(clean)}" if clean else ""))
            raise Finish()
        return "owner"
