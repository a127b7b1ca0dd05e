"""The Manage pages, for site managers: providers (External Connect), users, and the audit log
of SSH connections and admin actions.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from fastapi import Depends, Request
from pydantic import ValidationError
from sqlalchemy import and_, or_, select
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.responses import Response

from hatchway import names
from hatchway.db.models import AuditEvent, Provider, SSHConnection, User
from hatchway.server.api import providers as providers_api
from hatchway.server.api import schemas
from hatchway.server.api import users as users_api
from hatchway.server.api.convert import audit_out, connection_out, user_out
from hatchway.server.connlog import workspace_filter
from hatchway.server.context import ServerContext, client_source, get_ctx, get_db
from hatchway.server.errors import APIError
from hatchway.server.web import format as fmt
from hatchway.server.web.base import (
    form_secret,
    form_str,
    list_filter,
    page_number,
    page_router,
    paged,
    redirect,
    refusal_message,
    render,
    validation_message,
    web_manager,
)
from hatchway.server.web.created import Listing, Wider, created_notice
from hatchway.server.web.listback import USERS

router = page_router()


# --- manage: providers --------------------------------------------------------------------


@router.get("/manage/providers")
async def providers_page(request: Request, _sm: User = Depends(web_manager), db: AsyncSession = Depends(get_db)) -> Response:
    return render(request, "providers.html", section="manage", providers=await providers_api.provider_rows(db), form={}, error=None)


#: The Add provider form's labels, for its refusals (:func:`validation_message`).
PROVIDER_LABELS = {"name": "Name", "kind": "Kind", "docker_host": "Docker host", "docker_network": "Docker network"}


@router.post("/manage/providers")
async def provider_create(request: Request, sm: User = Depends(web_manager), db: AsyncSession = Depends(get_db)) -> Response:
    form = await request.form()
    values = {k: form_str(form, k) for k in ("name", "kind", "docker_host", "docker_network")}
    # Kept as sent, so a refused form shows the switch as it was left, not back at its default.
    values["external_connect"] = "on" if form.get("external_connect") == "on" else "off"
    try:
        body = schemas.ProviderCreateIn(
            name=values["name"], kind=values["kind"] or "manual",  # type: ignore[arg-type]
            external_connect=values["external_connect"] == "on",
            docker_host=values["docker_host"] or None, docker_network=values["docker_network"] or None,
        )
        if body.kind != "docker" and (body.docker_host or body.docker_network):
            # Without JS the Docker fields stay on the form whatever the kind (the API's own
            # refusal names the CLI's options).
            raise ValueError(
                f"Docker host and Docker network are for docker providers only: clear them, or choose the docker kind "
                f"instead of {body.kind}."
            )
        out = await providers_api.create_provider(body=body, request=request, sm=sm, db=db)
    except ValueError as exc:  # a ValidationError too
        error = validation_message(exc, PROVIDER_LABELS) if isinstance(exc, ValidationError) else str(exc)
    except APIError as exc:
        await db.rollback()
        error = refusal_message(exc)
    else:
        return redirect(request, "/manage/providers", "success", f'Provider "{out.name}" created.')
    return render(request, "providers.html", status=400, section="manage", providers=await providers_api.provider_rows(db), form=values, error=error)


def _no_provider(name: str) -> APIError:
    """A page's address naming no provider (an old bookmark, one deleted meanwhile)."""
    return APIError(404, f"No provider named {names.quoted(name)}", "See Manage > Providers for the providers of this deployment.")


async def _provider_row(db: AsyncSession, name: str) -> schemas.ProviderOut:
    for p in await providers_api.provider_rows(db):
        if p.name == name:
            return p
    raise _no_provider(name)


async def _provider(db: AsyncSession, name: str) -> Provider:
    try:
        return await providers_api.get_provider(db, name)
    except APIError:
        raise _no_provider(name) from None


@router.get("/manage/providers/{name}/edit")
async def provider_edit_page(name: str, request: Request, _sm: User = Depends(web_manager), db: AsyncSession = Depends(get_db)) -> Response:
    return render(request, "provider_edit.html", section="manage", provider=await _provider_row(db, name))


@router.post("/manage/providers/{name}/edit")
async def provider_edit(
    name: str,
    request: Request,
    sm: User = Depends(web_manager),
    ctx: ServerContext = Depends(get_ctx),
    db: AsyncSession = Depends(get_db),
) -> Response:
    form = await request.form()
    before = await _provider_row(db, name)
    wanted = form.get("external_connect") == "on"
    # The API's own edit: audit event, live sessions ended, manifests pushed — identically.
    after = await providers_api.apply_provider_edit(
        ctx, db, sm, name, schemas.ProviderEditIn(external_connect=wanted), client_source(request)
    )
    if before.external_connect == after.external_connect:
        return redirect(request, "/manage/providers", "info", f'No changes to provider "{name}".')
    if after.external_connect:
        msg = f'Saved. External Connect is on for provider "{name}": users can connect to its workspaces over SSH again.'
    else:
        msg = (
            f'Saved. External Connect is off for provider "{name}": new SSH connections to its '
            "workspaces are refused and live sessions were ended."
        )
    return redirect(request, "/manage/providers", "success", msg)


@router.get("/manage/providers/{name}/delete")
async def provider_delete_confirm(
    name: str, request: Request, _sm: User = Depends(web_manager), db: AsyncSession = Depends(get_db)
) -> Response:
    """One look before deleting. A provider that may not be deleted (the built-in one, one that
    still has workspaces) is refused here, in the API's words, rather than after the click."""
    p = await _provider(db, name)
    try:
        await providers_api.refuse_deletion(db, p)
    except APIError as exc:
        return redirect(request, "/manage/providers", "error", refusal_message(exc))
    return render(
        request,
        "confirm.html",
        section="manage",
        title=f'Delete provider "{p.name}"?',
        body=[
            f'Provider "{p.name}" ({p.kind}) will be deleted. It has no workspaces, so no one loses access to anything.',
            ("Workspaces can no longer be created on it; its past SSH connections and admin actions stay in the "
             "audit log. To use it again, add it again with Add provider."),
        ],
        action=f"/manage/providers/{p.name}/delete",
        confirm_label="Delete provider",
        danger=True,
        cancel="/manage/providers",
    )


@router.post("/manage/providers/{name}/delete")
async def provider_delete(
    name: str, request: Request, sm: User = Depends(web_manager), db: AsyncSession = Depends(get_db)
) -> Response:
    try:
        # The API's own delete: the same refusals (a workspace created since the confirmation
        # page opened, too), the same audit event.
        await providers_api.remove_provider(db, sm, name, client_source(request))
    except APIError as exc:
        return redirect(request, "/manage/providers", "error", refusal_message(exc))
    return redirect(request, "/manage/providers", "success", f'Provider "{name}" deleted.')


# --- manage: users ------------------------------------------------------------------------


async def _users_page(request: Request, sm: User, db: AsyncSession, status: int = 200, form: dict[str, str] | None = None, error: str | None = None) -> Response:
    search = list_filter(request)
    rows, pager = await paged(request, db, users_api.users_query(search))
    # Every action in a row comes back to this page of the list, with its filter.
    back = USERS.link({"search": search, "page": str(pager["page"])})
    return render(
        request, "users.html", status=status, section="manage", users=[user_out(u) for u in rows], pager=pager,
        search=search, form=form or {"role": "member"}, error=error, back=back, back_query=USERS.query(back),
    )


@router.get("/manage/users")
async def users_page(request: Request, sm: User = Depends(web_manager), db: AsyncSession = Depends(get_db)) -> Response:
    return await _users_page(request, sm, db)


#: The New user form's labels, for its refusals (:func:`validation_message`).
USER_LABELS = {"username": "Username", "email": "Email", "role": "Role", "password": "Initial password"}


@router.post("/manage/users")
async def user_create(
    request: Request, sm: User = Depends(web_manager), ctx: ServerContext = Depends(get_ctx), db: AsyncSession = Depends(get_db)
) -> Response:
    form = await request.form()
    values = {k: form_str(form, k) for k in ("username", "email", "role")}
    password = form.get("password")
    try:
        body = schemas.UserCreateIn(
            username=values["username"], email=values["email"], role=values["role"] or "member",  # type: ignore[arg-type]
            password=password if isinstance(password, str) else "",
        )
        out = await users_api.create_user(body=body, request=request, sm=sm, ctx=ctx, db=db)
    except ValidationError as exc:
        return await _users_page(request, sm, db, 400, values, validation_message(exc, USER_LABELS))
    except APIError as exc:
        await db.rollback()
        # The rollback expired the signed-in user, whom the page's header reads: unless the page
        # lists them (a filter, a page past the first) that read was a lazy load, and a 500.
        await db.refresh(sm)
        return await _users_page(request, sm, db, exc.status, values, refusal_message(exc))
    # The form posts to the page of the list it is on (its ``back``): back there, filter and all,
    # with a notice that says where the new user is when that page does not show them.
    search = list_filter(request)
    notice = await created_notice(
        db, f'User "{out.username}" created as {out.role}.', User.username, out.username,
        _users_listing(search), page_number(request), _users_wider(search),
    )
    return redirect(request, USERS.link(request.query_params), "success", notice.message, notice.links)


def _users_listing(search: str) -> Listing:
    """Manage > Users filtered to ``search``, as its page lists it."""
    return Listing(users_api.users_query(search), lambda page: USERS.link({"search": search, "page": str(page)}))


def _users_wider(search: str) -> Wider | None:
    """Manage > Users without its filter, for a new user whose name the filter leaves out."""
    if not search:
        return None
    return Wider(f"because the list is filtered to names containing {names.quoted(search)}", "Show all", _users_listing(""))


async def _user_action(request: Request, fn: Any, done: str, **kw: Any) -> Response:
    """The API's change, then back to the page of the list the action was taken from."""
    back = USERS.back((await request.form()).get("next"))
    try:
        out = await fn(request=request, **kw)
    except APIError as exc:
        return redirect(request, back, "error", refusal_message(exc))
    return redirect(request, back, "success", done.format(u=out, role=out.role.replace("-", " ")))


def _confirm_user_action(
    request: Request, *, title: str, body: list[str], action: str, confirm_label: str,
    fields: dict[str, str] | None = None, danger: bool = False,
) -> Response:
    """The look before an action on a user, taken from a page of Manage > Users: confirming or
    cancelling goes back to that page and its filter (``next``)."""
    back = USERS.back(request.query_params.get("next"))
    return render(
        request, "confirm.html", section="manage", title=title, body=body, action=action,
        fields={**(fields or {}), "next": back}, confirm_label=confirm_label, danger=danger, cancel=back,
    )


@router.get("/manage/users/{username}/suspend")
async def user_suspend_confirm(
    username: str, request: Request, _sm: User = Depends(web_manager), db: AsyncSession = Depends(get_db)
) -> Response:
    """Suspending cuts someone off mid-work (their shells end at once): one look before it."""
    target = await _user_row(db, username)
    return _confirm_user_action(
        request,
        title=f'Suspend user "{target.username}"?',
        body=[
            (f'{target.username} ({target.email}) can no longer sign in or open SSH connections. Their sign-in '
             "sessions and live SSH connections end now, work in progress in those shells included."),
            "Activate them again from the same menu; they then sign in once more (their old sessions stay ended).",
        ],
        action=f"/manage/users/{target.username}/suspend",
        confirm_label="Suspend user",
        danger=True,
    )


@router.post("/manage/users/{username}/suspend")
async def user_suspend(
    username: str, request: Request, sm: User = Depends(web_manager),
    ctx: ServerContext = Depends(get_ctx), db: AsyncSession = Depends(get_db),
) -> Response:
    return await _user_action(
        request, users_api.suspend_user, 'User "{u.username}" suspended: they cannot sign in or connect, and their live sessions were ended.',
        username=username, sm=sm, ctx=ctx, db=db,
    )


@router.post("/manage/users/{username}/activate")
async def user_activate(
    username: str, request: Request, sm: User = Depends(web_manager),
    ctx: ServerContext = Depends(get_ctx), db: AsyncSession = Depends(get_db),
) -> Response:
    return await _user_action(request, users_api.activate_user, 'User "{u.username}" activated: they can sign in again (sessions from before the suspension stay ended).', username=username, sm=sm, ctx=ctx, db=db)


@router.get("/manage/users/{username}/make-member")
async def user_make_member_confirm(
    username: str, request: Request, sm: User = Depends(web_manager), db: AsyncSession = Depends(get_db)
) -> Response:
    """Making a site manager a member takes their administration away (yours, if it is you):
    one look before it. The button posts the same role change as before."""
    target = await _user_row(db, username)
    whose = "Your" if target.id == sm.id else "Their"
    if target.id == sm.id:
        who = ("You stop being a site manager at once: Manage and everything under it close for you, and only "
               "another site manager can make you one again.")
    else:
        who = (f"{target.username} ({target.email}) stops being a site manager: they can no longer administer "
               "users, providers or other users' workspaces, nor see the audit log.")
    return _confirm_user_action(
        request,
        title=f'Make "{target.username}" a member?',
        body=[who, f"{whose} own workspaces, SSH key and sessions stay as they are."],
        action=f"/manage/users/{target.username}/role",
        fields={"role": "member"},
        confirm_label="Make member",
        danger=True,
    )


@router.get("/manage/users/{username}/make-site-manager")
async def user_make_site_manager_confirm(
    username: str, request: Request, _sm: User = Depends(web_manager), db: AsyncSession = Depends(get_db)
) -> Response:
    """Making someone a site manager hands them every user, workspace and provider: one look
    before it, as before taking that away. The button posts the same role change as before."""
    target = await _user_row(db, username)
    return _confirm_user_action(
        request,
        title=f'Make "{target.username}" a site manager?',
        body=[
            (f"{target.username} ({target.email}) becomes a site manager: they can administer every user, workspace "
             "and provider (suspend users, set their passwords, turn SSH off for a provider) and see the audit log."),
            "Their own workspaces, SSH key and sessions stay as they are. Make them a member again from the same menu.",
        ],
        action=f"/manage/users/{target.username}/role",
        fields={"role": "site-manager"},
        confirm_label="Make site manager",
    )


@router.post("/manage/users/{username}/role")
async def user_role(username: str, request: Request, sm: User = Depends(web_manager), db: AsyncSession = Depends(get_db)) -> Response:
    form = await request.form()
    try:
        body = schemas.RoleIn(role=form_str(form, "role"))  # type: ignore[arg-type]
    except ValidationError:
        return redirect(request, USERS.back(form.get("next")), "error", "Choose a role: member or site-manager.")
    return await _user_action(request, users_api.set_role, 'User "{u.username}" is now a {role}.', username=username, body=body, sm=sm, db=db)


async def _user_row(db: AsyncSession, username: str) -> User:
    try:
        return await users_api.get_user(db, username)
    except APIError:
        raise APIError(404, f"No user named {names.quoted(username)}", "See Manage > Users for the users of this deployment.") from None


def _user_password_page(request: Request, target: User, back: str, status: int = 200, error: str | None = None) -> Response:
    """The Set password form; ``back`` is the page of the users list it was opened from."""
    return render(request, "user_password.html", status=status, section="manage", target=target, back=back, error=error)


#: Where Set password on one's own row sends a site manager (hatchway.server.api.users.reset_password).
_OWN_PASSWORD = "Your own password is changed here, with your current one."


@router.get("/manage/users/{username}/password")
async def user_password_page(
    username: str, request: Request, sm: User = Depends(web_manager), db: AsyncSession = Depends(get_db)
) -> Response:
    target = await _user_row(db, username)
    if target.id == sm.id:
        return redirect(request, "/account/password", "info", _OWN_PASSWORD)
    return _user_password_page(request, target, USERS.back(request.query_params.get("next")))


#: The Set password form's labels, for its refusals (:func:`validation_message`).
SET_PASSWORD_LABELS = {"password": "New password"}


@router.post("/manage/users/{username}/password")
async def user_password_set(
    username: str, request: Request, sm: User = Depends(web_manager), ctx: ServerContext = Depends(get_ctx),
    db: AsyncSession = Depends(get_db),
) -> Response:
    target = await _user_row(db, username)
    if target.id == sm.id:
        return redirect(request, "/account/password", "info", _OWN_PASSWORD)
    form = await request.form()
    back = USERS.back(form.get("next"))
    password = form_secret(form, "password")
    if password != form_secret(form, "password_confirm"):
        return _user_password_page(request, target, back, 400, "The two passwords do not match.")
    try:
        body = schemas.PasswordSetIn(password=password)
    except ValidationError as exc:
        return _user_password_page(request, target, back, 400, validation_message(exc, SET_PASSWORD_LABELS))
    # The API's own reset: every session of theirs ends, audited.
    ended = await users_api.reset_password(db, ctx.broadcast, sm, target.username, body.password, client_source(request))
    sessions = f"{ended} sign-in session{'' if ended == 1 else 's'} of theirs ended"
    return redirect(request, back, "success", f'Password of "{target.username}" set; {sessions}.')


# --- manage: audit ------------------------------------------------------------------------


@router.get("/manage/audit")
async def audit_page(request: Request, _sm: User = Depends(web_manager), db: AsyncSession = Depends(get_db)) -> Response:
    q = request.query_params
    view = "admin" if q.get("view") == "admin" else "connections"
    user_f = (q.get("user") or "").strip()
    ws_f = (q.get("workspace") or "").strip()

    if view == "connections":
        stmt = select(SSHConnection)
        if user_f:
            stmt = stmt.where(SSHConnection.username == user_f)
        if ws_f:
            stmt = stmt.where(workspace_filter(ws_f))
        order = (SSHConnection.started_at.desc(), SSHConnection.id.desc())
    else:
        stmt = select(AuditEvent)
        if user_f:
            stmt = stmt.where(
                or_(AuditEvent.actor == user_f, AuditEvent.target == user_f, AuditEvent.target.startswith(user_f + "/", autoescape=True))
            )
        if ws_f:
            target = AuditEvent.target == ws_f if "/" in ws_f else or_(AuditEvent.target == ws_f, AuditEvent.target.endswith("/" + ws_f, autoescape=True))
            stmt = stmt.where(and_(AuditEvent.action.startswith("workspace."), target))
        order = (AuditEvent.id.desc(),)

    rows, pager = await paged(request, db, stmt.order_by(*order))
    if view == "connections":
        items = [
            {"c": connection_out(r), "duration": fmt.connection_duration(r.started_at, r.ended_at)} for r in rows
        ]
    else:
        items = [{"e": audit_out(r)} for r in rows]
    usernames = [u.username for u in (await db.execute(select(User).order_by(User.username))).scalars()]
    base = {k: v for k, v in (("user", user_f), ("workspace", ws_f)) if v}
    return render(
        request,
        "audit.html",
        section="manage",
        view=view,
        items=items,
        pager=pager,
        user_filter=user_f,
        workspace_filter=ws_f,
        usernames=usernames,
        tab_links={
            "connections": "/manage/audit?" + urlencode(base),
            "admin": "/manage/audit?" + urlencode({**base, "view": "admin"}),
        },
        clear_link="/manage/audit" + ("?view=admin" if view == "admin" else ""),
    )
