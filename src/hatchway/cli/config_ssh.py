"""``hatchway config-ssh``: one Host entry per reachable workspace in ~/.ssh/config.

Everything outside Hatchway's managed block is the user's and is kept byte for byte; the block
goes before the user's first Host/Match/Include so a ``Host *`` of theirs (or of a file they
include) cannot override it; host keys are pinned from what the agents reported, never
``StrictHostKeyChecking no``.

The command first checks the ssh config (a directory, a dangling link or a damaged block fails
here) and works out everything it would write (the ssh config, the key download, Hatchway's
known_hosts and standalone ssh_config) without writing anything, so that ``--dry-run``, a
declined confirmation and those errors leave the disk exactly as it was. A symlinked ssh config
(dotfiles managers) is written through the link.

The ssh config is the person's: it is read only if it is a regular file (a FIFO would hang us, a
link to /dev/zero exhaust memory), its bytes are kept exactly even where they are not UTF-8
(OpenSSH does not mind), and root editing it for them (``sudo -E``) leaves it theirs.
"""

from __future__ import annotations

import os
import shlex
import shutil
import stat
import sys
from dataclasses import dataclass, field
from pathlib import Path

import click

from hatchway.agent.authorized_keys import validate_public_key
from hatchway.cli.common import ApiClient, directory_problem, fail, fail_write, session_or_fail
from hatchway.cli.keys import choose_key_path, download_key, holds_key, ssh_dir
from hatchway.cli.replies import Key, Workspace
from hatchway.cli.session import StoredSession, config_dir
from hatchway.fileutil import (
    DanglingSymlinkError,
    FileTooLargeError,
    NotRegularFileError,
    atomic_write,
    file_kind,
    make_private_dir,
    read_regular,
    write_target,
)
from hatchway.names import quoted, shown
from hatchway.server.policy import external_connect_off_message
from hatchway.sshconfig import (
    MAX_ALIAS_LEN,
    HostEntry,
    apply_block,
    render_block,
    render_entry,
    render_known_hosts,
    unified_diff,
    valid_alias,
)

ALIAS_PREFIX = "hatchway."


def hatchway_argv() -> list[str]:
    """How ssh should start us: an absolute path, independent of ssh's PATH."""
    me = Path(sys.argv[0])
    if me.name == "hatchway" and me.exists():
        return [str(me.absolute())]
    found = shutil.which("hatchway")
    if found:
        return [str(Path(found).absolute())]
    return [sys.executable, "-m", "hatchway"]


@dataclass
class Plan:
    entries: list[HostEntry] = field(default_factory=list)
    known_hosts: list[tuple[str, str]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    disabled: int = 0
    # Why each workspace left out cannot be reached, said as ``hatchway ssh`` refuses it.
    refusals: dict[str, str] = field(default_factory=dict)


def _leave_out_unusable_name(plan: Plan, name: str) -> None:
    """Leave out a workspace whose name no ssh config line can hold (a line break, non-ASCII, a
    hundred thousand characters): before anything of it is collected, so that it cannot break
    the other workspaces' entries. The name is shown escaped and cut short."""
    why = (
        "its name cannot be an ssh host name (only ASCII letters, digits, '.', '_' and '-', at most "
        f"{MAX_ALIAS_LEN - len(ALIAS_PREFIX)} characters); to reach it with ssh, recreate it under such a name"
    )
    plan.refusals[ALIAS_PREFIX + name] = f"workspace {quoted(name)} cannot be reached with ssh: {why}"
    plan.warnings.append(f"left out workspace {quoted(name)}: {why}")


def _one_per_host_name(workspaces: list[Workspace], plan: Plan) -> list[Workspace]:
    """The workspaces whose host names ssh can tell apart, in the server's order; the others are
    left out with a warning.

    ssh compares host names, and known_hosts names, ignoring case: to it ``hatchway.dev`` and
    ``hatchway.DEV`` are one host, so only the first entry would ever be used and either
    workspace's pinned host key would be accepted for the other. Exactly one of them is kept, the
    same whatever order the server lists them in: the all-lowercase spelling (the only kind
    Hatchway gives a workspace, and what ssh turns a typed host name into), else the name that
    sorts first in code point order; of a name listed twice, the first. The others get neither
    an entry nor a pinned key.
    """
    chosen: dict[str, tuple[bool, str, int]] = {}
    for index, ws in enumerate(workspaces):
        name = ws["name"]
        host = name.lower()  # names are ASCII here, so this is ssh's lowercase()
        rank = (name != host, name, index)
        chosen[host] = min(chosen.get(host, rank), rank)
    kept = []
    for index, ws in enumerate(workspaces):
        _, kept_name, kept_index = chosen[ws["name"].lower()]
        alias = ALIAS_PREFIX + ws["name"]
        if index == kept_index:
            kept.append(ws)
        elif ws["name"] == kept_name:
            plan.warnings.append(f"the server listed {alias} more than once; it is configured once")
        else:
            plan.refusals[alias] = (
                f'workspace "{ws["name"]}" cannot be reached with ssh: ssh does not tell its host name apart from '
                f'that of workspace "{kept_name}" (it ignores case); rename one of the two'
            )
            plan.warnings.append(
                f"left out {alias}: ssh does not tell it apart from {ALIAS_PREFIX + kept_name} (it ignores case), "
                f"so only {ALIAS_PREFIX + kept_name} is configured; rename one of the two workspaces"
            )
    return kept


def plan_entries(
    workspaces: list[Workspace], key_path: Path, known_hosts_path: Path, proxy_argv: list[str]
) -> Plan:
    """Decide which workspaces get an entry and why the others do not (pure).

    A workspace's name is checked before anything of it is collected (its host keys included):
    one unusable report must leave out that workspace alone, never break everyone's entries.
    """
    plan = Plan()
    named = []
    for ws in workspaces:
        if valid_alias(ALIAS_PREFIX + ws["name"]):
            named.append(ws)
        else:
            _leave_out_unusable_name(plan, ws["name"])
    for ws in _one_per_host_name(named, plan):
        alias = ALIAS_PREFIX + ws["name"]
        # Pinning is not access: keep every reported host key, so an entry written earlier (or
        # by another run) still verifies the moment SSH is switched back on.
        for key in ws.get("host_keys") or []:
            try:
                plan.known_hosts.append((alias, validate_public_key(key)))
            except ValueError:
                pass
        if not ws["external_connect"]:
            plan.disabled += 1
            plan.refusals[alias] = external_connect_off_message(ws["provider"])
            plan.warnings.append(
                f'SSH is not enabled for workspace provider "{ws["provider"]}": left out {alias} '
                '(External Connect is off; ask a site manager if you need it, then run "hatchway config-ssh" again)'
            )
            continue
        if not ws.get("os_user") or not ws.get("host_keys"):
            plan.refusals[alias] = (
                f'workspace "{ws["name"]}" is not reachable: its agent has not connected yet; '
                f'start the agent (see "hatchway workspaces show {ws["name"]}")'
            )
            plan.warnings.append(
                f"left out {alias}: its agent has not connected yet, so its user and host key are "
                'unknown; start the agent, then run "hatchway config-ssh" again'
            )
            continue
        entry = HostEntry(
            alias=alias,
            user=ws["os_user"],
            proxy_command=[*proxy_argv, ws["name"]],
            identity_file=str(key_path),
            known_hosts_file=str(known_hosts_path),
            host_key_alias=alias,
        )
        try:
            # One workspace with an unusable report must not break everyone else's entries.
            render_entry(entry)
            for key in ws["host_keys"]:
                validate_public_key(key)
        except ValueError as exc:
            plan.refusals[alias] = f'the server reported something unusable for workspace "{ws["name"]}": {exc}'
            plan.warnings.append(f"left out {alias}: {exc}")
            continue
        plan.entries.append(entry)
    return plan


def proxy_argv_for(session_dir: Path) -> list[str]:
    argv = [*hatchway_argv(), "proxy"]
    default = Path.home() / ".config" / "hatchway"
    if session_dir.absolute() != default.absolute():
        argv += ["--config-dir", str(session_dir.absolute())]
    return argv


@dataclass
class Prepared:
    """Everything config-ssh and ``hatchway ssh`` write besides the user's ssh config, worked
    out but not yet written: the caller decides whether to write (``--dry-run`` does not)."""

    client: ApiClient
    plan: Plan
    session_dir: Path
    key_path: Path
    key_stale: bool  # missing, or not the account's current key (regenerated elsewhere)
    block: str  # Hatchway's block for the user's ssh config
    files: dict[Path, bytes]  # Hatchway's known_hosts and standalone ssh_config, mode 0600


def prepare(session: StoredSession) -> Prepared:
    """Ask the server for the key and the workspaces and plan the entries; writes nothing."""
    client = ApiClient(session.url, session.token, username=session.username)
    public_key = client.call("GET", "/users/me/key", expect=Key)["public_key"]
    key_path = choose_key_path(session.url, public_key).absolute()
    sdir = config_dir()
    known = sdir / "known_hosts"
    workspaces = client.call("GET", "/workspaces", expect=list[Workspace])
    plan = plan_entries(workspaces, key_path, known.absolute(), proxy_argv_for(sdir))
    try:
        # plan_entries has checked every value already; this is the last line of defence, so
        # that no answer of the server's can end in a traceback.
        block = render_block(plan.entries)
        files = {known: render_known_hosts(plan.known_hosts).encode(), standalone_path(sdir): block.encode()}
    except ValueError as exc:
        fail(
            f"the server's list of workspaces cannot be written as ssh config ({exc}); nothing was written; "
            "check that the server at the URL you logged in to runs the same Hatchway version as this CLI"
        )
    return Prepared(client, plan, sdir, key_path, not holds_key(key_path, public_key), block, files)


def standalone_path(sdir: Path) -> Path:
    return sdir / "ssh_config"


def changed_files(prepared: Prepared) -> list[Path]:
    """The files of ``prepared.files`` whose content on disk differs (or that do not exist)."""
    changed = []
    for path, data in prepared.files.items():
        try:
            same = read_regular(path)[1] == data  # a FIFO put there must not hang a dry run
        except OSError:
            same = False
        if not same:
            changed.append(path)
    return changed


def write_prepared(prepared: Prepared) -> None:
    """Download the key when stale and write Hatchway's known_hosts and standalone ssh_config
    (the same entries as a file of their own, for ``ssh -F`` and ``hatchway ssh``).

    Files whose content on disk is already the same are not rewritten: nothing to gain, and a
    full disk or a read-only config dir need not stop a run that has nothing to change there.
    A failure is one line naming the file, which :func:`atomic_write` has left as it was.
    """
    if prepared.key_stale:
        download_key(prepared.client, prepared.key_path)
        click.echo(f"Downloaded your Hatchway SSH key to {prepared.key_path}", err=True)
    changed = changed_files(prepared)
    if not changed:
        return
    try:
        make_private_dir(prepared.session_dir, parents=True)
    except OSError as exc:
        fail(f"cannot create {prepared.session_dir}: {exc.strerror or exc}; fix that, then try again")
    for path in changed:
        try:
            atomic_write(path, prepared.files[path], 0o600)
        except OSError as exc:
            fail_write(path, exc, "try again")


def build_plan(session: StoredSession) -> tuple[Plan, Path]:
    """Fetch workspaces, make sure the key and Hatchway's files are on disk, plan the entries;
    the plan and the standalone ssh_config that holds its entries (for ``hatchway ssh``)."""
    prepared = prepare(session)
    write_prepared(prepared)
    return prepared.plan, standalone_path(prepared.session_dir)


# --------------------------------------------------------------------------------------------
# The user's ssh config file


def config_target(path: Path) -> Path:
    """The file that holds ``path``'s content (a symlink's target), or a clear failure.

    Checked before anything is fetched or written, so a wrong ``--ssh-config`` costs nothing.
    A FIFO, device or socket is refused here, by its type alone: reading one could hang or never
    end, and replacing one (a config linked to /dev/null, run as root) would break the machine.
    """
    try:
        target = write_target(path)
    except DanglingSymlinkError as exc:
        fail(f"{exc}, then run config-ssh again")
    except OSError as exc:
        fail(f"cannot update {path}: {exc.strerror or exc}; fix the link, then run config-ssh again")
    try:
        mode = os.stat(target).st_mode
    except OSError:
        return target  # missing (created on write), or unreadable: read_config says which
    if stat.S_ISDIR(mode):
        fail(
            f"{path} is a directory, not an ssh config file; give the file itself, "
            f"for example: hatchway config-ssh --ssh-config {path / 'config'}"
        )
    if not stat.S_ISREG(mode):
        what = path if target == path else f"{path} is a symbolic link to {target}, which"
        fail(
            f"{what} is {file_kind(mode)}, not a regular file, so it cannot hold an ssh config; "
            "use a regular file (or give one with --ssh-config), then run config-ssh again"
        )
    return target


def check_config_directory(path: Path, target: Path) -> None:
    """Fail unless ``target``'s directory exists or is ``~/.ssh`` (which :func:`write_config`
    creates, as OpenSSH's tools do): a mistyped ``--ssh-config`` must not leave new folders behind."""
    problem = None if target.parent == ssh_dir() else directory_problem(target.parent, "--ssh-config")
    if problem:
        fail(f"cannot write {path}: {problem}")


def read_config(path: Path) -> str:
    """The current text of the ssh config ("" when it does not exist yet).

    Read as bytes (the user's CRLFs stay as they are) from a regular file only, and decoded with
    ``surrogateescape``: OpenSSH reads bytes, so a Latin-1 comment is fine there and must be
    kept exactly (:func:`config_bytes` gives the same bytes back). Our block never holds such
    characters (:func:`hatchway.sshconfig.apply_block` refuses them).
    """
    try:
        data = read_regular(path)[1]
    except FileNotFoundError:
        return ""
    except (NotRegularFileError, FileTooLargeError) as exc:  # their message says what to do
        fail(f"{exc}, then run config-ssh again")
    except OSError as exc:
        fail(f"cannot read {path}: {exc.strerror or exc}; fix that, then run config-ssh again")
    return data.decode("utf-8", "surrogateescape")


def config_bytes(text: str) -> bytes:
    """The bytes of ssh config text from :func:`read_config`: the user's undecodable bytes as they were."""
    return text.encode("utf-8", "surrogateescape")


def new_config(path: Path, existing: str, block: str | None) -> str:
    """``existing`` with Hatchway's block replaced by ``block`` (removed when None)."""
    try:
        return apply_block(existing, block)
    except ValueError as exc:
        # The message already names the line and what to do; say nothing twice.
        fail(f"cannot update {path}: {exc}")


def write_config(path: Path, target: Path, new: str) -> None:
    """Write the ssh config through a symlink, keeping the file's mode (0600 when new).

    A missing ``~/.ssh`` is created 0700, as ssh and ssh-keygen do; no directory's mode is changed.
    Run as root on someone else's file (``sudo -E``), the file stays theirs (owner and group).
    """
    try:
        if target.parent == ssh_dir():
            make_private_dir(target.parent)
        mode = target.stat().st_mode & 0o777 if target.exists() else 0o600
        atomic_write(path, config_bytes(new), mode, follow_symlinks=True, keep_owner=True)
    except OSError as exc:
        fail_write(target, exc, "run config-ssh again")


def show_diff(existing: str, new: str, path: Path) -> None:
    """The change as ``diff -u`` prints it, the user's bytes as they are (not UTF-8 or not)."""
    click.echo(config_bytes(unified_diff(existing, new, str(path))), nl=False)


def dry_run_notes(prepared: Prepared | None) -> list[str]:
    """What a real run would also write (``--dry-run`` only says so)."""
    if prepared is None:
        return []
    notes = []
    if prepared.key_stale:
        notes.append(f"would download your Hatchway SSH key to {prepared.key_path} (and .pub)")
    notes.extend(f"would write {path}" for path in changed_files(prepared))
    return notes


def show_dry_run(path: Path, existing: str, new: str, prepared: Prepared | None) -> None:
    """The diff on stdout (as ``diff -u`` would print it), the other files on stderr."""
    if new == existing:
        click.echo(f"{path} is up to date")
    else:
        show_diff(existing, new, path)
    for note in dry_run_notes(prepared):
        click.echo(f"hatchway: --dry-run: {note}", err=True)


#: Coder v1's words when nothing can be configured because SSH is off for every workspace.
ALL_DISABLED = "SSH is disabled or not available for any workspaces in your deployment"


@click.command("config-ssh")
@click.option("--ssh-config", "ssh_config", type=click.Path(path_type=Path), default=None, help="The ssh config file to edit [default ~/.ssh/config].")
@click.option("--dry-run", is_flag=True, help="Show the change as a diff and write nothing.")
@click.option("--remove", is_flag=True, help="Remove Hatchway's block from the ssh config.")
@click.option("-y", "--yes", is_flag=True, help="Do not ask for confirmation.")
def config_ssh(ssh_config: Path | None, dry_run: bool, remove: bool, yes: bool) -> None:
    """Write Host entries for your workspaces into your ssh config."""
    path = (ssh_config or Path.home() / ".ssh" / "config").expanduser().absolute()
    target = config_target(path)
    if not remove:  # removing from a file that does not exist writes nothing
        check_config_directory(path, target)
    existing = read_config(target)
    new_config(path, existing, None)  # a damaged block fails here, before anything is fetched
    prepared = None if remove else prepare(session_or_fail())
    if prepared is not None:
        for warning in prepared.plan.warnings:
            click.echo(f"hatchway: {shown(warning)}", err=True)  # they quote what the server said
    new = new_config(path, existing, None if prepared is None else prepared.block)
    if dry_run:
        show_dry_run(path, existing, new, prepared)
        if prepared is not None and not prepared.plan.entries and prepared.plan.disabled:
            fail(ALL_DISABLED)  # what the real run would end with, exit status included
        return
    if new == existing:
        click.echo(f"{path} is up to date")
    elif not yes and sys.stdin.isatty():
        show_diff(existing, new, path)
        click.confirm(f"Write these changes to {path}?", abort=True)
    if prepared is not None:
        write_prepared(prepared)
    if new != existing:
        write_config(path, target, new)
        if remove:
            click.echo(f"Removed Hatchway's block from {path}")
    if prepared is not None:
        summarise(prepared.plan, None if ssh_config is None else path)


def summarise(plan: Plan, path: Path | None) -> None:
    """The closing line: what to type next (``ssh -F`` for a file plain ssh does not read), or
    why there is nothing to reach."""
    if plan.entries:
        names = ", ".join(e.alias for e in plan.entries)
        ssh = "ssh" if path is None or path == Path.home() / ".ssh" / "config" else f"ssh -F {shlex.quote(str(path))}"
        click.echo(f"You can now run: {ssh} {plan.entries[0].alias}   (configured: {names})")
    elif plan.disabled:
        fail(ALL_DISABLED)
    else:
        click.echo("No workspaces to configure yet; create one with: hatchway workspaces create NAME")
