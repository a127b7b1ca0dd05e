"""The Workspaces pages: the list, creating one, a workspace's page and its lifecycle buttons,
deleting it, and a manual workspace's agent token.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from fastapi import Depends, Request
from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.responses import Response

from hatchway import names
from hatchway.db.models import SSHConnection, User, Workspace
from hatchway.server.api import providers as providers_api
from hatchway.server.api import schemas
from hatchway.server.api import users as users_api
from hatchway.server.api import workspaces as ws_api
from hatchway.server.api.convert import connection_out, workspace_out
from hatchway.server.context import ServerContext, get_ctx, get_db
from hatchway.server.errors import APIError
from hatchway.server.policy import SSHFacts, external_connect_off_message, ssh_refusal
from hatchway.server.web import format as fmt
from hatchway.server.web.base import (
    form_str,
    list_filter,
    page_number,
    page_router,
    paged,
    redirect,
    refusal_message,
    render,
    validation_message,
    web_user,
)
from hatchway.server.web.created import Listing, Wider, created_notice
from hatchway.server.web.listback import WORKSPACES

router = page_router()


def _connect_facts(viewer: User, w: schemas.WorkspaceOut, owner_id: str) -> SSHFacts:
    return SSHFacts(
        requester=viewer.username,
        requester_id=viewer.id,
        requester_suspended=viewer.suspended,
        workspace=w.name,
        owner=w.owner,
        owner_id=owner_id,
        provider=w.provider,
        external_connect=w.external_connect,
        state=w.state,
        state_reason=w.state_reason,
        agent_connected=w.agent_connected,
        requester_sees_all=viewer.role == "site-manager",
    )


def _workspace_view(viewer: User, w: schemas.WorkspaceOut, managed: bool = False) -> dict[str, Any]:
    mine = w.owner == viewer.username
    refusal = ssh_refusal(_connect_facts(viewer, w, viewer.id if mine else "someone-else"))
    return {
        "ws": w,
        "mine": mine,
        "path": f"/workspaces/{w.owner}/{w.name}",
        "command": f"ssh hatchway.{w.name}",
        "ssh_disabled": not w.external_connect,
        "ssh_disabled_detail": external_connect_off_message(w.provider),
        "refusal": refusal,
        "not_ready": _not_ready(w),
        "managed": managed,
    }


def _not_ready(w: schemas.WorkspaceOut) -> str | None:
    """A short why-not for the list; the detail page has the full sentence."""
    if w.state != "running":
        return f"Not reachable while {w.state}"
    if not w.agent_connected:
        return "Not reachable: agent not connected"
    return None


def _refusal_page(exc: APIError, owner: str, name: str) -> APIError:
    """The API's refusal of a workspace's address, said for someone in a browser. Another
    user's address is refused as the API refuses it (403 before any lookup), so the page
    tells a member nothing about whether such a workspace, or such a user, exists."""
    if exc.status == 404:
        return APIError(404, f"No workspace {names.quoted(f'{owner}/{name}')}", "It may have been deleted. See the Workspaces page.")
    if exc.status == 403 and exc.error == "forbidden":
        return APIError(
            403,
            "This workspace is not yours",
            f"Workspaces under {names.quoted(owner)} can be opened only by that user and by site managers. "
            "Yours are on the Workspaces page; if you need access to this one, ask a site manager.",
        )
    return exc


async def _show_workspace(db: AsyncSession, user: User, owner: str, name: str) -> schemas.WorkspaceOut:
    try:
        return await ws_api.show_workspace(name=name, owner=owner, user=user, db=db)
    except APIError as exc:
        raise _refusal_page(exc, owner, name) from None


def _managed(request: Request, kind: str) -> bool:
    """Whether Hatchway itself starts and stops workspaces of this provider kind."""
    supervisor = getattr(request.app.state, "supervisor", None)
    manages = getattr(supervisor, "manages", None)
    return bool(manages(kind)) if callable(manages) else kind != "manual"


async def _workspaces_page(
    request: Request, user: User, db: AsyncSession, status: int = 200, form: dict[str, str] | None = None,
    error: str | None = None, created: schemas.WorkspaceCreatedOut | None = None,
) -> Response:
    manager = user.role == "site-manager"
    show_all, search = _tab(request, user)
    rows, pager = await paged(request, db, ws_api.workspaces_query(user, show_all, search))
    providers = await providers_api.provider_rows(db, user)
    # Start, Stop, Restart, Delete and New workspace come back to this very page: its tab, its
    # filter, its page.
    back = _list_page(request, user, str(pager["page"]))
    return render(
        request,
        "workspaces.html",
        status=status,
        section="workspaces",
        workspaces=[_workspace_view(user, workspace_out(w), _managed(request, w.provider.kind)) for w in rows],
        pager=pager,
        search=search,
        back=back,
        back_query=WORKSPACES.query(back),
        providers=providers,
        show_all=show_all,
        form=form or {"provider": "local" if any(p.name == "local" for p in providers) else "", "owner": user.username},
        owner_field=manager,
        owner_names=await _owner_suggestions(db, user) if manager else [],
        error=error,
        created=created,
        supports_openssh=_SUPPORTS_OPENSSH,
    )


def _tab(request: Request, user: User) -> tuple[bool, str]:
    """Which list ``request`` asks for: Everyone's (site managers only) or Mine, and the
    filter, which only Everyone's has."""
    show_all = user.role == "site-manager" and request.query_params.get("all") == "1"
    return show_all, list_filter(request) if show_all else ""


def _list_page(request: Request, user: User, page: str) -> str:
    """The address of page ``page`` of the list ``request`` asks for, written anew (listback)."""
    show_all, search = _tab(request, user)
    return WORKSPACES.link({"all": "1" if show_all else "", "search": search, "page": page})


# Newer APIs let a local workspace run OpenSSH on its port 22; offer it when this one does.
_SUPPORTS_OPENSSH = "openssh" in schemas.WorkspaceCreateIn.model_fields


@router.get("/workspaces")
async def workspaces_page(request: Request, user: User = Depends(web_user), db: AsyncSession = Depends(get_db)) -> Response:
    return await _workspaces_page(request, user, db)


def _parse_env(text: str) -> dict[str, str]:
    """The Image environment box's ``NAME=value`` lines. A line without "=" is named by its
    number, as the person sees the box (the CLI's ``--env`` wording would not fit); names and
    values are checked with the rest of the form (``WorkspaceCreateIn``)."""
    env: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        key, sep, value = line.strip().partition("=")
        if not sep:
            raise ValueError(f"Image environment line {number} ({names.quoted(line.strip())}) has no \"=\": write one NAME=value per line.")
        env[key] = value
    return env


#: The New workspace form's labels, for its refusals (:func:`validation_message`).
WORKSPACE_LABELS = {
    "name": "Name", "provider": "Provider", "env": "Image environment", "image": "Image",
    "openssh": "the “OpenSSH on port 22” switch", "cvm": "the “CVM: systemd as PID 1” switch",
}


#: Users the Owner box suggests (its <datalist>), when the deployment has no more than this: a
#: <select> of every user made a page of megabytes on a deployment of thousands, and a part of
#: them would only hide who is missing, so a larger deployment's box suggests no one and takes
#: the name typed.
OWNER_SUGGESTIONS = 50


async def _owner_suggestions(db: AsyncSession, user: User) -> list[tuple[str, str]]:
    """Every user's name for the Owner box, each with a note (you, suspended), or none when
    there are more than it suggests."""
    stmt = users_api.users_query().with_only_columns(User.username, User.suspended).limit(OWNER_SUGGESTIONS + 1)
    found = (await db.execute(stmt)).all()
    if len(found) > OWNER_SUGGESTIONS:
        return []
    return [(name, "you" if name == user.username else "suspended" if suspended else "") for name, suspended in found]


async def _owner_refusal(db: AsyncSession, user: User, owner: str) -> str | None:
    """Why the form's Owner cannot be used, said with its label; None when it can (left empty
    or yourself: your own workspace). A member's form has no Owner: one forged into the post is
    left to the API, which refuses it (403) whoever it names."""
    if not owner or owner == user.username or user.role != "site-manager":
        return None
    try:
        names.check_username(owner)
    except names.Refused as exc:
        return exc.for_label("Owner") + "."
    try:
        await users_api.get_user(db, owner)
    except APIError:
        return f"Owner: no user named {names.quoted(owner)}; type an existing user's name (Manage > Users lists them)."
    return None


def _capital(text: str) -> str:
    return text[:1].upper() + text[1:]


def _other_kinds_field(values: dict[str, str], kind: str, fields: list[str], wanted: str) -> str:
    """A refusal of ``fields`` (set on the form) that only ``wanted`` providers take."""
    labels = [WORKSPACE_LABELS[f] for f in fields]
    if len(labels) > 1:
        are, undo = "are", "clear them"
    else:
        are, undo = "is", "clear it" if fields == ["image"] else "turn it off"
    return (f"{_capital(' and '.join(labels))} {are} only for {wanted} providers, and provider "
            f"{names.quoted(values['provider'] or 'local')} is {kind}: {undo}, or choose a {wanted} provider.")


def _form_refusal(exc: APIError, values: dict[str, str], kind: str) -> str:
    """The API's refusal as the form says it: the API names the CLI's options (``--image``),
    the form names its fields by their labels. Other refusals keep the API's words."""
    if exc.error == ws_api.OPENSSH_NOT_LOCAL:
        return _other_kinds_field(values, kind, ["openssh"], "local")
    if exc.error == ws_api.IMAGE_NOT_DOCKER:
        return _other_kinds_field(values, kind, [f for f in ("image", "cvm") if values[f]], "docker")
    if exc.status == 403 and exc.error == "forbidden":  # an Owner field a member's form does not have
        return (f"Only site managers can create a workspace for another user, and you are a member: create "
                f"your own (reload this page for a form without Owner), or ask a site manager to create it for "
                f"{names.quoted(values['owner'])}.")
    if exc.error == ws_api.DOCKER_NEEDS_IMAGE:
        return ("Image is required for docker providers: give an image on the provider's Docker engine, "
                "registry.example.com/dev:latest say.")
    return f"{_capital(exc.error)}: {exc.detail}"


@router.post("/workspaces")
async def create_workspace(
    request: Request,
    user: User = Depends(web_user),
    ctx: ServerContext = Depends(get_ctx),
    db: AsyncSession = Depends(get_db),
) -> Response:
    form = await request.form()
    values = {k: form_str(form, k) for k in ("name", "provider", "owner")}
    env_raw = form.get("env")
    values["env"] = env_raw if isinstance(env_raw, str) else ""
    extra: dict[str, Any] = {}
    if _SUPPORTS_OPENSSH:
        extra["openssh"] = form.get("openssh") == "on"
        values["openssh"] = "on" if extra["openssh"] else ""
    values["image"] = form_str(form, "image")
    extra["cvm"] = form.get("cvm") == "on"
    values["cvm"] = "on" if extra["cvm"] else ""
    refusal = await _owner_refusal(db, user, values["owner"])
    if refusal:
        return await _workspaces_page(request, user, db, 400, values, refusal)
    try:
        body = schemas.WorkspaceCreateIn(
            name=values["name"], provider=values["provider"] or "local", env=_parse_env(values["env"]),
            image=values["image"] or None, **extra,
        )
        # A member's form has no Owner field; one sent all the same is refused by the API (403).
        out = await ws_api.create_workspace(body=body, request=request, owner=values["owner"] or None, user=user, ctx=ctx, db=db)
    except ValueError as exc:  # ValidationError is a ValueError too
        msg = validation_message(exc, WORKSPACE_LABELS) if isinstance(exc, ValidationError) else str(exc)
        return await _workspaces_page(request, user, db, 400, values, msg)
    except APIError as exc:
        await db.rollback()
        await db.refresh(user)  # the rollback expired it; the page below reads it again
        provider = values["provider"] or "local"
        kind = next((p.kind for p in await providers_api.provider_rows(db) if p.name == provider), "")
        return await _workspaces_page(request, user, db, exc.status, values, _form_refusal(exc, values, kind))
    # The form posts to the page of the list it is on: back there, as after a user is created.
    back = _list_page(request, user, request.query_params.get("page", ""))
    if out.agent_command:
        # A manual provider's agent token is shown exactly once, so render it now.
        return _agent_token_page(request, out, out.agent_command, True, back)
    if out.owner == user.username:
        done = f'Workspace "{out.name}" created on provider "{out.provider}".'
    else:
        done = (f'Workspace "{out.owner}/{out.name}" created for {out.owner} on provider "{out.provider}". '
                f"{out.owner} connects after running hatchway config-ssh.")
    show_all, search = _tab(request, user)
    notice = await created_notice(
        db, done, Workspace.id, out.id,
        Listing(ws_api.workspaces_query(user, show_all, search), lambda page: _list_page(request, user, str(page))),
        page_number(request), _wider(user, show_all, search, out.owner),
        ("Go to the workspace", WORKSPACES.opened(f"/workspaces/{out.owner}/{out.name}", back)),
    )
    return redirect(request, back, "success", notice.message, notice.links)


def _wider(user: User, show_all: bool, search: str, owner: str) -> Wider | None:
    """The list that shows a new workspace of ``owner``'s the shown one may leave out: Everyone
    without a filter, when the shown list is filtered or is Mine and the workspace someone else's."""
    if show_all and search:
        why = f"because the list is filtered to names and owners containing {names.quoted(search)}"
        label = "Show all"
    elif not show_all and owner != user.username:
        why, label = "because Mine lists only your own workspaces", "Show Everyone's"
    else:
        return None
    return Wider(why, label, Listing(ws_api.workspaces_query(user, True), lambda page: WORKSPACES.link({"all": "1", "page": str(page)})))


@router.get("/workspaces/{owner}/{name}")
async def workspace_page(
    owner: str, name: str, request: Request, user: User = Depends(web_user), db: AsyncSession = Depends(get_db)
) -> Response:
    w = await _show_workspace(db, user, owner, name)
    view = _workspace_view(user, w, _managed(request, w.provider_kind))
    view["connections"] = await _recent_connections(db, user, w.id)
    # Opened from a page of a list, it remembers it: its way back, and (through ``here``, the
    # ``next`` of its buttons) where its Delete goes and where its other buttons come back to.
    back = WORKSPACES.parse(request.query_params.get("next"))
    here = WORKSPACES.opened(view["path"], back)
    return render(
        request, "workspace.html", section="workspaces", view=view, list_back=back or _list_of(user, w.owner),
        back=here, here_query="?" + urlencode({"next": here}),
    )


def _list_of(viewer: User, owner: str) -> str:
    """The list a workspace is on when its page remembers none: Mine, or a site manager's Everyone."""
    return "/workspaces" if owner == viewer.username else "/workspaces?all=1"


def _list_in(back: str | None) -> str | None:
    """The page of a list ``back`` (from :func:`_return_to`) is, or remembers."""
    return None if back is None else WORKSPACES.parse(back) or WORKSPACES.remembered(back)


def _agent_token_page(
    request: Request, w: schemas.WorkspaceOut, command: str, created: bool, back: str
) -> Response:
    """A manual workspace's agent command, shown once; ``back`` is the page of a list the
    workspace was created or opened from, which the page's links keep."""
    return render(
        request, "agent_token.html", section="workspaces", ws=w, agent_command=command, created=created,
        list_back=back, ws_page=WORKSPACES.opened(f"/workspaces/{w.owner}/{w.name}", back),
    )


def _return_to(value: object, owner: str, name: str) -> str | None:
    """Where an action on a workspace goes back to: the page its button was on (``next``), a
    page of a list or the workspace's own page (remembering its list), written anew; None for
    anything else."""
    return WORKSPACES.parse(value) or WORKSPACES.parse_opened(f"/workspaces/{owner}/{name}", value)


#: SSH connections shown on a workspace's page (the Audit page has them all, for site managers).
RECENT_CONNECTIONS = 10


async def _recent_connections(db: AsyncSession, viewer: User, workspace_id: str) -> list[dict[str, Any]]:
    """The newest connections to the workspace: a member sees their own (as the API shows
    them), a site manager everyone's, refused attempts by other site managers included. A
    member's attempt at someone else's workspace is not tied to it (``api/ssh.py`` keeps only
    the name asked for): the Audit page finds it by that name."""
    stmt = select(SSHConnection).where(SSHConnection.workspace_id == workspace_id)
    if viewer.role != "site-manager":
        stmt = stmt.where(SSHConnection.user_id == viewer.id)
    stmt = stmt.order_by(SSHConnection.started_at.desc(), SSHConnection.id.desc()).limit(RECENT_CONNECTIONS)
    rows = (await db.execute(stmt)).scalars().all()
    return [{"c": connection_out(r), "duration": fmt.connection_duration(r.started_at, r.ended_at)} for r in rows]


@router.get("/workspaces/{owner}/{name}/delete")
async def workspace_delete_confirm(
    owner: str, name: str, request: Request, user: User = Depends(web_user), db: AsyncSession = Depends(get_db)
) -> Response:
    w = await _show_workspace(db, user, owner, name)
    back = _return_to(request.query_params.get("next"), owner, name)
    return render(request, "confirm.html", section="workspaces", **_delete_confirm_text(w, back))


def _delete_confirm_text(w: schemas.WorkspaceOut, back: str | None) -> dict[str, Any]:
    """Asked from a page of a list (``back``), Cancel and the deletion go back to it; from the
    workspace's own page, Cancel stays there and the deletion goes to the list it remembers."""
    return {
        "title": f'Delete workspace "{w.name}"?',
        "body": [
            f'Workspace "{w.owner}/{w.name}" on provider "{w.provider}" will be deleted.',
            "Live SSH sessions to it end now and its agent is disconnected. This cannot be undone.",
        ],
        "action": f"/workspaces/{w.owner}/{w.name}/delete",
        "fields": {"next": back} if back else {},
        "confirm_label": "Delete workspace",
        "danger": True,
        "cancel": back or f"/workspaces/{w.owner}/{w.name}",
    }


@router.post("/workspaces/{owner}/{name}/delete")
async def workspace_delete(
    owner: str,
    name: str,
    request: Request,
    user: User = Depends(web_user),
    ctx: ServerContext = Depends(get_ctx),
    db: AsyncSession = Depends(get_db),
) -> Response:
    back = _return_to((await request.form()).get("next"), owner, name)
    try:
        await ws_api.delete_workspace(name=name, request=request, owner=owner, user=user, ctx=ctx, db=db)
    except APIError as exc:
        raise _refusal_page(exc, owner, name) from None
    # Its own page is gone: the list it was on. A page of a list past its end sends the browser
    # to the list's last page (base.paged).
    return redirect(request, _list_in(back) or _list_of(user, owner), "success", f'Workspace "{owner}/{name}" deleted.')


@router.get("/workspaces/{owner}/{name}/agent-token")
async def agent_token_confirm(
    owner: str, name: str, request: Request, user: User = Depends(web_user), db: AsyncSession = Depends(get_db)
) -> Response:
    w = await _show_workspace(db, user, owner, name)
    back = _return_to(request.query_params.get("next"), owner, name) or f"/workspaces/{w.owner}/{w.name}"
    return render(
        request,
        "confirm.html",
        section="workspaces",
        title=f'New agent token for "{w.name}"?',
        body=[
            ("A new token is generated and shown once. The old token stops working now: an agent "
            "running with it is disconnected until you restart it with the new one."),
        ],
        action=f"/workspaces/{w.owner}/{w.name}/agent-token",
        fields={"next": back},
        confirm_label="Generate new token",
        danger=False,
        cancel=back,
    )


@router.post("/workspaces/{owner}/{name}/agent-token")
async def agent_token(
    owner: str,
    name: str,
    request: Request,
    user: User = Depends(web_user),
    ctx: ServerContext = Depends(get_ctx),
    db: AsyncSession = Depends(get_db),
) -> Response:
    back = _return_to((await request.form()).get("next"), owner, name)
    try:
        out = await ws_api.rotate_agent_token(name=name, request=request, owner=owner, user=user, ctx=ctx, db=db)
    except APIError as exc:
        raise _refusal_page(exc, owner, name) from None
    w = await ws_api.show_workspace(name=name, owner=owner, user=user, db=db)
    return _agent_token_page(request, w, out.agent_command, False, _list_in(back) or _list_of(user, owner))


def _lifecycle_route(action: ws_api.Lifecycle) -> None:
    """POST /workspaces/{owner}/{name}/<action> from the buttons: the API's change, then back
    to the page the button was on with what happened."""

    async def endpoint(
        owner: str, name: str, request: Request, user: User = Depends(web_user), db: AsyncSession = Depends(get_db),
    ) -> Response:
        # The button's page: a page of a list, or the workspace's own page (remembering its list).
        back = _return_to((await request.form()).get("next"), owner, name) or f"/workspaces/{owner}/{name}"
        try:
            out = await ws_api.change_state(action, name, owner, request, user, db)
        except APIError as exc:
            exc = _refusal_page(exc, owner, name)
            return redirect(request, back, "error", refusal_message(exc))
        label = f'"{owner}/{name}"'
        if out.state == "failed":
            return redirect(request, back, "error", f"Workspace {label} failed: {out.state_reason or 'see its details'}")
        if action == "start" and out.state == "running":  # a page older than the workspace's start
            return redirect(request, back, "success", f"Workspace {label} is already running.")
        done = {"start": f"Starting workspace {label}.", "stop": f"Workspace {label} stopped.",
                "restart": f"Restarting workspace {label}."}
        return redirect(request, back, "success", done[action])

    endpoint.__name__ = f"workspace_{action}"
    router.add_api_route(f"/workspaces/{{owner}}/{{name}}/{action}", endpoint, methods=["POST"])


for _action in ("start", "stop", "restart"):
    _lifecycle_route(_action)
