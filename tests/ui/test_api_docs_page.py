"""``/api/v1/docs`` in a real browser that can reach nothing but the server, as on a deployment
without internet access: every request elsewhere is aborted and recorded. The page must still
render every operation of the OpenAPI document and try one out, with no request leaving the
server, and its CSP must hold: nothing violates it, and an injected inline script does not run."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlsplit

import httpx

from tests.ui.conftest import UIServer

#: Records every CSP violation the page reports, from before its first script runs.
RECORD_CSP_VIOLATIONS = (
    "window.cspViolations = [];"
    "document.addEventListener('securitypolicyviolation', e => window.cspViolations.push([e.effectiveDirective, e.blockedURI]));"
)


def _confine_to(page: Any, origin: str) -> tuple[list[str], list[str]]:
    """Abort every request of ``page`` not to ``origin``: (every request made, those aborted)."""
    made: list[str] = []
    aborted: list[str] = []

    def route(r: Any) -> None:
        parts = urlsplit(r.request.url)
        if f"{parts.scheme}://{parts.netloc}" == origin:
            r.continue_()
        else:
            aborted.append(r.request.url)
            r.abort()

    page.on("request", lambda r: made.append(r.url))
    page.route("**/*", route)
    return made, aborted


def test_docs_page_works_with_nothing_but_the_server(anon_page: Any, ui_server: UIServer) -> None:
    page = anon_page
    made, aborted = _confine_to(page, ui_server.url)
    page.add_init_script(RECORD_CSP_VIOLATIONS)
    page.goto(ui_server.url + "/api/v1/docs")
    assert aborted == []

    page.locator(".opblock").first.wait_for()
    shown = page.eval_on_selector_all(
        ".opblock",
        "els => els.map(e => [e.querySelector('.opblock-summary-method').textContent,"
        " e.querySelector('.opblock-summary-path').dataset.path])",
    )
    document = httpx.get(ui_server.url + "/api/v1/openapi.json").json()
    listed = [[method.upper(), path] for path, ops in document["paths"].items() for method in ops]
    assert sorted(shown) == sorted(listed) and ["GET", "/api/v1/workspaces"] in shown

    # Try one out: Swagger UI calls the API and shows its answer (not signed in: a 401).
    op = page.locator(".opblock-get").filter(has=page.locator('.opblock-summary-path[data-path="/api/v1/workspaces"]'))
    op.locator(".opblock-summary").click()
    op.get_by_role("button", name="Try it out").click()
    op.get_by_role("button", name="Execute").click()
    answer = op.locator(".live-responses-table .response")
    assert answer.locator(".response-col_status").inner_text().splitlines()[0] == "401"
    shown_body = json.loads(answer.locator(".response-col_description .highlight-code pre").inner_text())
    assert shown_body == httpx.get(ui_server.url + "/api/v1/workspaces").json()

    assert aborted == []
    assert [u for u in made if not u.startswith(ui_server.url + "/")] == []
    static = ui_server.url + "/api/v1/docs/static"
    assert {f"{static}/swagger-ui.css", f"{static}/swagger-ui-bundle.js", ui_server.url + "/api/v1/openapi.json"} <= set(made)
    assert page.evaluate("window.cspViolations") == []

    # The CSP is enforced: a script injected into the page (as an XSS would) does not run.
    page.evaluate("() => { const s = document.createElement('script'); s.textContent = 'window.injected = 1'; document.body.append(s); }")
    assert page.evaluate("window.injected") is None
    assert page.evaluate("window.cspViolations") == [["script-src-elem", "inline"]]
