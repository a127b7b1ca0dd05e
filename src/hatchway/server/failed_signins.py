"""Failed sign-ins in the audit record, without letting a flood of them fill the database.

A sign-in that fails (on the API's ``POST /auth/login``, which ``hatchway login`` and the web
UI's sign-in form both use) is audited as ``session.sign-in-failed``: the account tried, the
address, the client it names and why it failed (the reasons below); never the password. A name
no account has is not kept either, only its length (``name_length``): people type their
password into the username field, and the record would hold it in the clear. The client is
told what it was told before: nothing here tells an unknown name from a wrong password. A name
or password longer than any can be is such an attempt too (``too-long``), on the API as on the
form: refused unchecked, counted by the throttle, recorded as the others are (a name that
long by its length only).

Which attempts get rows of their own is decided as for SSH attempts without a valid token
(``hatchway.server.unidentified``), by two counts:

- attempts with a name no account has (or one too long to be any) are counted per address:
  someone trying made-up names from one address gets a few rows a minute, the rest are
  counted in one row for that address;
- attempts at an existing account are counted per account, apart from the others. These are
  the ones a site manager looks into (someone is after alice, or alice forgot her password),
  so a flood of made-up names from an address must not use up that address's rows and bury
  them in one tally row; and a flood aimed at alice must not
  take bob's rows. Counted per account, a guesser spread over many addresses adds one tally
  per account and minute rather than a few rows per address. They are bounded all the same,
  suspended accounts' attempts included (unlike a suspended user's SSH attempts, each of
  which needs a live session token): a script holding a password could otherwise add a row
  per password check, about every 150 ms.

The login throttle (``hatchway.server.throttle``) decides whether a password is checked at
all; this decides whether a refusal gets a row of its own. Once a guesser is throttled, its
attempts are refused unchecked, at once and cheaply: those are what floods, and each is
recorded as ``throttled``, in the same bounded rows. The counts here are each replica's own.

A signed-in user's password change refused for a wrong current password (``PUT
/api/v1/users/me/password``, Account > Password) goes through the same check and throttle, and
is audited as ``user.password-failed``: the user as actor and target, why (the same reasons),
never a password. Its rows are bounded per account as sign-ins at accounts are, in a count of
their own: a script holding a session gets a few rows a minute, not one per guess.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field
from functools import partial

from fastapi import Request
from sqlalchemy.ext.asyncio import AsyncSession

from hatchway.db.models import AuditEvent, User, utcnow
from hatchway.server.audit import record
from hatchway.server.context import ServerContext, client_source
from hatchway.server.errors import db_error_text, db_failure, log_db_failure, sqlite_file
from hatchway.server.session_tokens import client_label
from hatchway.server.unidentified import Tally, UnidentifiedAttempts, Wording

log = logging.getLogger("hatchway.server.signin")

ACTION = "session.sign-in-failed"
#: A signed-in user's password change refused: the current password given is not theirs (the
#: counterpart of ``user.password``, as ``session.sign-in-failed`` is of ``session.sign-in``).
PASSWORD_CHANGE_ACTION = "user.password-failed"

UNKNOWN_USER = "unknown-user"
WRONG_PASSWORD = "wrong-password"
NO_PASSWORD = "no-password"  # the account has none yet: a site manager sets one
SUSPENDED = "suspended"  # the right password, but the account is suspended
THROTTLED = "throttled"  # refused without a look at the password (too many failures)
TOO_LONG = "too-long"  # the name or password is longer than any can be: refused unchecked

#: The target of a failed sign-in with a name no account has (the name itself is not kept).
UNKNOWN_NAME = "(unknown name)"

BY_ADDRESS = Wording("failed sign-in", "address", "addresses", "from", "as", "others")
BY_ACCOUNT = Wording("failed sign-in", "account", "accounts", "to", "from", "other addresses")
CHANGES_BY_ACCOUNT = Wording("failed password change", "account", "accounts", "of", "from", "other addresses")


@dataclass(frozen=True)
class Kind:
    """What one count's rows are: their action, how a tally words them, and whose attempts they
    count (an account's, else an address's; made by the account's own signed-in user, else by
    nobody signed in)."""

    action: str
    wording: Wording
    by_account: bool
    signed_in: bool


SIGN_IN_BY_ADDRESS = Kind(ACTION, BY_ADDRESS, by_account=False, signed_in=False)
SIGN_IN_BY_ACCOUNT = Kind(ACTION, BY_ACCOUNT, by_account=True, signed_in=False)
#: Counted apart from sign-ins: a script holding alice's session, guessing her password here,
#: must neither add a row per guess nor use up the rows of attempts to sign in as her.
PASSWORD_CHANGE = Kind(PASSWORD_CHANGE_ACTION, CHANGES_BY_ACCOUNT, by_account=True, signed_in=True)
KINDS = (SIGN_IN_BY_ADDRESS, SIGN_IN_BY_ACCOUNT, PASSWORD_CHANGE)


@dataclass
class FailedSignIns:
    """The counts of the module's doc (and of refused password changes), one server's worth."""

    counts: dict[Kind, UnidentifiedAttempts] = field(
        default_factory=lambda: {kind: UnidentifiedAttempts(kind.wording) for kind in KINDS})


def failure_reason(user: User | None) -> str:
    """Why a password check that did not match failed, for the record (never for the client)."""
    if user is None:
        return UNKNOWN_USER
    return NO_PASSWORD if user.password_hash is None else WRONG_PASSWORD


async def record_failed_sign_in(
    ctx: ServerContext, db: AsyncSession, request: Request, address: str, username: str, reason: str,
    account: User | None,
) -> None:
    """Audit a refused sign-in as ``username`` (``account``: the user of that name, if any) from
    ``address`` (the host alone, as the throttle counts it) in a row of its own, committed now;
    or count it in its tally's row, written within seconds. A database that cannot take the
    row (full, or down) does not change the refusal the client gets: the log says what the
    record misses."""
    if account is not None:
        await _record(ctx, db, request, SIGN_IN_BY_ACCOUNT, account.username, address, reason, None)
    else:
        await _record(ctx, db, request, SIGN_IN_BY_ADDRESS, address, UNKNOWN_NAME, reason, None,
                      name_length=len(username))


async def record_failed_password_change(
    ctx: ServerContext, db: AsyncSession, request: Request, address: str, user: User, reason: str,
) -> None:
    """Audit ``user``'s own refused password change (a wrong current password, or one refused
    unchecked) as :data:`PASSWORD_CHANGE_ACTION`, bounded per account as failed sign-ins are:
    a script holding a session must not add a row per guess."""
    await _record(ctx, db, request, PASSWORD_CHANGE, user.username, address, reason, user)


async def _record(
    ctx: ServerContext, db: AsyncSession, request: Request, kind: Kind, key: str, asked: str, reason: str,
    actor: User | None, **extra: object,
) -> None:
    """A row of its own for an attempt under ``key`` (an account, or an address), committed now,
    or a count in its tally. ``asked`` is the other of the two: the address, or the name tried."""
    counts = ctx.failed_sign_ins.counts[kind]
    tally = counts.admit(key, asked, utcnow())
    target, address = (key, asked) if kind.by_account else (asked, key)
    if tally is None:
        detail = {"reason": reason, "client": client_label(request.headers.get("user-agent")), **extra}
        record(db, actor, kind.action, target, client_source(request), **detail)
        try:
            await db.commit()
        except Exception as exc:  # the refusal stands as it is: its record is what is lost
            sqlite_path = sqlite_file(ctx.settings.db_url)
            if db_failure(exc, sqlite_path) is None:
                raise
            with contextlib.suppress(Exception):
                await db.rollback()
            log_db_failure(f"auditing a {kind.wording.attempt} {'of' if kind.signed_in else 'as'} {target} from {address}",
                           exc, sqlite_path, then="; the attempt is not in the audit record")
        return
    if tally.count == 1:
        w = kind.wording
        whose = f"{w.by_key} {'account ' if kind.by_account else ''}{key}" if tally.key is not None else (
            f"{w.by_key} all {w.keys} together")
        log.warning("%ss %s: more than %d in %.0f s; the rest are counted in one row of the audit record",
                    w.attempt, whose, tally.limit, tally.window_s)
    counts.keep_writing(partial(_write_tally, ctx, kind=kind), "audit-sign-in-tallies")


async def write_tallies_now(ctx: ServerContext) -> None:
    """At shutdown: the counts not written yet are written now, not lost with the process."""
    for kind, counts in ctx.failed_sign_ins.counts.items():
        await counts.write_now(partial(_write_tally, ctx, kind=kind))


def _tally_event(tally: Tally, kind: Kind) -> dict[str, object]:
    """A tally's audit row: the account (or name) of its first attempt and the address, as a
    row of its own gives them (and its actor: the account's own user, when signed in), and what
    it counted."""
    target, source = (tally.first_key, tally.asked) if kind.by_account else (tally.asked, tally.key)
    actor = tally.first_key if kind.signed_in else None
    detail = {"reason": "counted", "attempts": tally.count, "until": tally.last_at.isoformat(), "summary": tally.reason()}
    return {"at": tally.first_at, "actor": actor, "action": kind.action, "target": target, "source": source,
            "detail": detail}


async def _write_tally(ctx: ServerContext, tally: Tally, kind: Kind) -> None:
    """Write a tally's row, or rewrite it with what was counted since."""
    values = _tally_event(tally, kind)
    try:
        async with ctx.sessions() as db:
            row = await db.get(AuditEvent, tally.row_id) if tally.row_id is not None else None
            if row is None:
                row = AuditEvent(**values)
                db.add(row)
            else:
                for key, value in values.items():
                    setattr(row, key, value)
            await db.commit()
        tally.row_id = row.id
    except Exception as exc:  # the database may be down: say what the record is missing
        log.warning("could not record in the audit record %d %ss %s %s: %s", tally.count, kind.wording.attempt,
                    kind.wording.by_key, tally.key or "several", db_error_text(exc))
