"""Cookies, CSRF tokens and flash messages for the web UI.

The browser holds the same kind of session token the CLI holds (a row in ``api_tokens``),
in an HttpOnly, SameSite=Lax cookie that is Secure when the access URL is https.

CSRF: every state-changing form carries a token that is an HMAC, under a key derived from the
deployment secret, of the session token (or, before sign-in, of a random pre-session cookie).
A page from another site can neither read the cookies nor compute the HMAC, so it cannot
produce a form the server accepts. Nothing is kept in memory, so any replica can check it.
A request with a session cookie takes only its session's token: a pre-session cookie and token
are anyone's for the asking, so whoever can plant a cookie for this host (a sibling subdomain,
another port, a man in the middle of plain http) could otherwise forge a signed-in user's forms.

Over https the cookies' names carry the ``__Host-`` prefix: browsers then take them only from
this host, over https, for the whole site, so a sibling subdomain or a man in the middle cannot
plant one at all (a planted session would sign a visitor in as someone else; a planted
pre-session cookie would forge the sign-in form). The server knows it is served over https
from its access URL, the address browsers use; a TLS proxy in front does not change that. A
browser signed in before the prefix came in, or before the access URL became https, signs in
again: honouring the old names would keep them plantable.

Flash messages ride in a short-lived cookie that is HMAC-signed with the same key, so nobody
can plant a message that looks like it came from Hatchway (it is HTML-escaped either way).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
from collections.abc import Sequence
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from starlette.requests import Request
from starlette.responses import Response

from hatchway.server.context import ServerContext
from hatchway.server.crypto import load_or_create_deployment_secret

SESSION_COOKIE = "hatchway_session"
PRESESSION_COOKIE = "hatchway_pre"
FLASH_COOKIE = "hatchway_flash"
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "x-csrf-token"
#: See above: cookies only this host can set, and only over https.
HOST_PREFIX = "__Host-"

_KEY_ATTR = "_hatchway_web_key"


def web_key(request: Request) -> bytes:
    """The UI's HMAC key, derived once per process from the deployment secret."""
    key = getattr(request.app.state, _KEY_ATTR, None)
    if key is None:
        ctx: ServerContext = request.app.state.ctx
        secret = load_or_create_deployment_secret(ctx.settings.data_dir)
        key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"hatchway/web/v1").derive(secret)
        setattr(request.app.state, _KEY_ATTR, key)
    return key


def _mac(request: Request, purpose: str, value: str) -> str:
    return hmac.new(web_key(request), f"{purpose}\0{value}".encode(), hashlib.sha256).hexdigest()


def secure_cookies(request: Request) -> bool:
    ctx: ServerContext = request.app.state.ctx
    return ctx.settings.url.lower().startswith("https://")


def cookie_name(request: Request, name: str) -> str:
    """What the cookie called ``name`` (one of the names above) is called on this deployment."""
    return HOST_PREFIX + name if secure_cookies(request) else name


def get_cookie(request: Request, name: str) -> str | None:
    return request.cookies.get(cookie_name(request, name))


def set_cookie(request: Request, response: Response, name: str, value: str, max_age: int | None) -> None:
    response.set_cookie(
        cookie_name(request, name),
        value,
        max_age=max_age,
        path="/",
        httponly=True,
        samesite="lax",
        secure=secure_cookies(request),
    )


def clear_cookie(request: Request, response: Response, name: str) -> None:
    response.delete_cookie(cookie_name(request, name), path="/", httponly=True, samesite="lax", secure=secure_cookies(request))


# --- CSRF ---------------------------------------------------------------------------------


def presession(request: Request) -> str:
    """The anonymous browser's random binding value, created on first sight."""
    value = get_cookie(request, PRESESSION_COOKIE) or getattr(request.state, "new_presession", None)
    if not value:
        value = secrets.token_urlsafe(24)
        request.state.new_presession = value  # set on the response by the page renderer
    return value


def csrf_token(request: Request) -> str:
    """The token to embed in this page's forms."""
    session = getattr(request.state, "session_token", None)
    if session:
        return _mac(request, "csrf", session)
    return _mac(request, "csrf-pre", presession(request))


def csrf_valid(request: Request, submitted: str | None) -> bool:
    """Whether ``submitted`` is this browser's token: its session's when it sends a session
    cookie, valid or not (a stale one is dropped by the sign-in page), else its pre-session one."""
    if not submitted:
        return False
    session = get_cookie(request, SESSION_COOKIE)
    if session:
        expected = _mac(request, "csrf", session)
    else:
        pre = get_cookie(request, PRESESSION_COOKIE)
        if not pre:
            return False
        expected = _mac(request, "csrf-pre", pre)
    return hmac.compare_digest(submitted.encode(), expected.encode())


# --- flash --------------------------------------------------------------------------------


def set_flash(
    request: Request, response: Response, kind: str, message: str, links: Sequence[tuple[str, str]] = ()
) -> None:
    """A message for the next page, with ``links`` (label, address) after it: the ways on from
    it, such as to the page of a list that shows what was just created. The addresses are the
    server's own (the cookie is signed); the page escapes labels and addresses alike."""
    data: dict[str, Any] = {"k": kind, "m": message}
    if links:
        data["l"] = [list(link) for link in links]
    payload = base64.urlsafe_b64encode(json.dumps(data).encode()).decode()
    set_cookie(request, response, FLASH_COOKIE, f"{payload}.{_mac(request, 'flash', payload)}", max_age=60)


def pop_flash(request: Request, response: Response) -> dict[str, Any] | None:
    raw = get_cookie(request, FLASH_COOKIE)
    if not raw:
        return None
    clear_cookie(request, response, FLASH_COOKIE)
    payload, _, mac = raw.rpartition(".")
    if not payload or not hmac.compare_digest(mac.encode(), _mac(request, "flash", payload).encode()):
        return None
    try:
        data = json.loads(base64.urlsafe_b64decode(payload.encode()))
        links = [{"label": str(label), "href": str(href)} for label, href in data.get("l", [])]
        return {"kind": str(data["k"]), "message": str(data["m"]), "links": links}
    except (ValueError, KeyError, TypeError):
        return None


# --- response headers ---------------------------------------------------------------------

def content_security_policy(*inline_script_hashes: str) -> str:
    """Everything a page loads comes from this server: no CDN, no inline script or style, but
    for the inline scripts whose hashes (``'sha256-…'``) are given, which a page that cannot move
    its script into a file (the API docs, whose page FastAPI renders) names exactly."""
    scripts = " ".join(("'self'", *inline_script_hashes))
    return (
        f"default-src 'self'; script-src {scripts}; style-src 'self'; img-src 'self' data:; "
        "font-src 'self'; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; "
        "base-uri 'none'; object-src 'none'"
    )


SECURITY_HEADERS = {
    "Content-Security-Policy": content_security_policy(),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
}


def add_security_headers(response: Response) -> None:
    for k, v in SECURITY_HEADERS.items():
        response.headers.setdefault(k, v)
