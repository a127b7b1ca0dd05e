"""Who serves an SSH connection: the workspace's own port 22, or the built-in server.

SPEC 3.3: a workspace image may run its own sshd (typically OpenSSH under systemd). When port 22
greets with an SSH banner, connections are forwarded to it byte for byte; anything else (nothing
listening, silence, an HTTP server someone put on 22) is not trusted and the built-in server
answers instead. The check is made per connection, because a user may start or stop sshd at any
time, and it reuses that very TCP connection: the bytes read while checking (the banner, often
the server's KEXINIT too) are replayed to the client, so nothing is lost and no second connection
to sshd is needed.

Layout: :func:`parse_banner` is pure (tested exhaustively); :func:`probe` does the I/O for one
connection; :class:`Port22Monitor` keeps the current picture for the control channel's reports
(mode, server version, the server's host keys, diagnostics), refreshed periodically and whenever
a per-connection probe disagrees with it, so expensive work (fetching host keys) happens once per
change, never per connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

log = logging.getLogger("hatchway.agent.port22")

#: RFC 4253 4.2: the identification string is at most 255 characters including CR LF.
MAX_BANNER = 255
#: How long port 22 gets to greet. OpenSSH greets immediately on loopback; a listener that stays
#: silent for a second is not an SSH server we want to hand users to.
PROBE_TIMEOUT = 1.0
#: Chunk size for reads while looking for the banner; whatever arrives is replayed anyway.
_READ_CHUNK = 4096
#: Host-key algorithms asked for one by one, so every key type the server has is reported.
HOST_KEY_ALGORITHMS = ("ssh-ed25519", "ecdsa-sha2-nistp256", "rsa-sha2-512")
HOST_KEY_TIMEOUT = 3.0
#: Protocol versions an OpenSSH client can talk to (RFC 4253 5.1: "1.99" is a server that also
#: speaks 2.0). An SSH-1-only server would greet, then fail every client with "Protocol major
#: versions differ", so it is not trusted: the built-in server answers instead.
SSH2_PROTOCOLS = frozenset({"2.0", "1.99"})

NOT_SSH_DIAGNOSTIC = "port 22 answers but is not an SSH server; using the built-in server"


class BannerStatus(enum.Enum):
    NEED_MORE = "need-more"
    SSH = "ssh"
    NOT_SSH = "not-ssh"


@dataclass(frozen=True)
class Banner:
    """An SSH identification line, e.g. ``SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u3``."""

    line: str
    proto: str
    software: str
    comments: str

    @property
    def version(self) -> str:
        """What users are shown as the server version: software and comments, no protocol."""
        return f"{self.software} {self.comments}" if self.comments else self.software

    @property
    def is_openssh(self) -> bool:
        return self.software.startswith("OpenSSH_")


def parse_banner(data: bytes) -> tuple[BannerStatus, Banner | None]:
    """Decide from the first bytes a server sent whether it is an SSH server.

    ``NEED_MORE`` while the bytes so far could still become a banner line; ``SSH`` with the parsed
    :class:`Banner` once a complete ``SSH-2.0-`` (or ``SSH-1.99-``) line arrived; ``NOT_SSH`` as
    soon as the bytes cannot be one (wrong prefix, a protocol other than SSH 2 such as
    ``SSH-1.5-``, no line end within 255 bytes, non-printable or non-ASCII characters). Deliberately stricter than RFC 4253, which lets a server send other lines first:
    OpenSSH never does, and the line ends up in reports and logs, so it has to be clean text.
    """
    prefix = b"SSH-"
    head = data[: len(prefix)]
    if not prefix.startswith(head):
        return BannerStatus.NOT_SSH, None
    end = data.find(b"\n", 0, MAX_BANNER)
    if end < 0:
        if len(data) >= MAX_BANNER:
            return BannerStatus.NOT_SSH, None
        return BannerStatus.NEED_MORE, None
    raw = data[:end]
    if raw.endswith(b"\r"):
        raw = raw[:-1]
    try:
        line = raw.decode("ascii")
    except UnicodeDecodeError:
        return BannerStatus.NOT_SSH, None
    if not line.isprintable():
        return BannerStatus.NOT_SSH, None
    proto, _, rest = line[len("SSH-") :].partition("-")
    software, _, comments = rest.partition(" ")
    if proto not in SSH2_PROTOCOLS or not software:
        return BannerStatus.NOT_SSH, None
    return BannerStatus.SSH, Banner(line=line, proto=proto, software=software, comments=comments)


class PortState(enum.Enum):
    CLOSED = "closed"  # refused, unreachable, forwarding disabled
    SSH = "ssh"
    NOT_SSH = "not-ssh"


@dataclass
class ProbeResult:
    """The outcome of checking port 22 for one connection.

    For ``SSH`` with ``keep=True`` the caller owns ``reader``/``writer`` and must replay
    ``initial`` (every byte read so far) before anything else.
    """

    state: PortState
    banner: Banner | None = None
    initial: bytes = b""
    detail: str = ""
    reader: asyncio.StreamReader | None = None
    writer: asyncio.StreamWriter | None = None

    async def close(self) -> None:
        """Close the connection if the caller did not take it over."""
        if self.writer is not None:
            writer, self.writer, self.reader = self.writer, None, None
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


async def probe(
    port: int, *, timeout: float = PROBE_TIMEOUT, keep: bool = False, host: str = "127.0.0.1", limit: int = 256 * 1024
) -> ProbeResult:
    """Connect to ``host:port`` and read until the banner decides what is there.

    With ``keep`` and an SSH server, the open connection is returned for forwarding; in every
    other case the socket is closed before returning, on every path (timeout, cancellation).
    """
    if port <= 0:
        return ProbeResult(PortState.CLOSED, detail="forwarding to port 22 is disabled")
    deadline = time.monotonic() + timeout
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port, limit=limit), timeout)
    except (TimeoutError, OSError) as exc:
        return ProbeResult(PortState.CLOSED, detail=f"connect: {exc.__class__.__name__}: {exc}")
    result = ProbeResult(PortState.NOT_SSH, reader=reader, writer=writer)
    buf = b""
    try:
        while True:
            status, banner = parse_banner(buf)
            if status is BannerStatus.SSH:
                result.state, result.banner = PortState.SSH, banner
                break
            if status is BannerStatus.NOT_SSH:
                result.detail = f"greeting is not an SSH banner: {buf[:40]!r}"
                break
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                result.detail = f"no SSH banner within {timeout:.1f} s"
                break
            try:
                chunk = await asyncio.wait_for(reader.read(_READ_CHUNK), remaining)
            except TimeoutError:
                result.detail = f"no SSH banner within {timeout:.1f} s"
                break
            except OSError as exc:
                result.state, result.detail = PortState.CLOSED, f"read: {exc}"
                break
            if not chunk:
                # Accepted then closed at once: something listens but does not speak SSH to us
                # (or an sshd refusing us, e.g. MaxStartups); either way not usable now.
                result.detail = "closed the connection without an SSH banner" if buf else "closed the connection at once"
                break
            buf += chunk
        result.initial = buf
    except BaseException:
        await result.close()
        raise
    if result.state is not PortState.SSH or not keep:
        await result.close()
    return result


async def _fetch_one(host: str, port: int, alg: str) -> str | None:
    import asyncssh  # heavy import, only needed when port 22 is SSH

    try:
        key = await asyncssh.get_server_host_key(host, port, server_host_key_algs=[alg], config=None)
    except (OSError, asyncssh.Error) as exc:
        log.debug("port %d: no %s host key: %s", port, alg, exc)
        return None
    except Exception as exc:  # noqa: BLE001 - asyncssh raises assorted errors on odd servers; keys are optional
        log.debug("port %d: fetching the %s host key failed: %r", port, alg, exc)
        return None
    if key is None:
        return None
    line = key.export_public_key("openssh").decode("ascii").strip()
    return " ".join(line.split()[:2])  # type and data; a comment is meaningless here


async def fetch_host_keys(port: int, host: str = "127.0.0.1", timeout: float = HOST_KEY_TIMEOUT) -> list[str]:
    """The port-22 server's host public keys as OpenSSH lines (``type base64``).

    One handshake per key type, all at once and bounded by ``timeout`` overall, so a server that
    stalls handshakes delays the report by seconds, not minutes. A key type the server lacks
    fails its handshake and is skipped. Never raises (except cancellation).
    """
    tasks = [asyncio.create_task(_fetch_one(host, port, alg)) for alg in HOST_KEY_ALGORITHMS]
    try:
        await asyncio.wait(tasks, timeout=timeout)
    finally:
        for task in tasks:
            task.cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
    keys: list[str] = []
    for result in results:
        if isinstance(result, str) and result not in keys:
            keys.append(result)
    return keys


@dataclass(frozen=True)
class Port22Status:
    """What the control channel reports about port 22."""

    state: PortState = PortState.CLOSED
    banner: Banner | None = None
    # The server's host keys: those it presents when it answers, those its config names on disk
    # while nothing listens yet (see hatchway.agent.sshd_keys).
    host_keys: tuple[str, ...] = ()
    diagnostics: tuple[str, ...] = ()

    @property
    def is_ssh(self) -> bool:
        return self.state is PortState.SSH


DiagnosticsCollector = Callable[[], Awaitable[list[str]]]


@dataclass
class Port22Monitor:
    """Keeps :class:`Port22Status` current and tells the agent when it changed.

    ``collect_diagnostics`` is awaited on every refresh while port 22 is OpenSSH (the config may
    change without the banner changing); host keys are fetched only when the banner changed.
    """

    port: int
    on_change: Callable[[], None]
    collect_diagnostics: DiagnosticsCollector | None = None
    interval: float = 30.0
    key_fetcher: Callable[[int], Awaitable[list[str]]] = fetch_host_keys
    installed_keys: Callable[[], Awaitable[list[str]]] | None = None
    status: Port22Status = field(default_factory=Port22Status)
    _poke: asyncio.Event = field(default_factory=asyncio.Event)
    _key_cache: tuple[str | None, tuple[str, ...]] = (None, ())

    async def refresh(self) -> bool:
        """Probe once and update :attr:`status`; True when it changed."""
        result = await probe(self.port)
        return await self._update(result)

    async def _update(self, result: ProbeResult) -> bool:
        old = self.status
        diagnostics: list[str] = []
        host_keys: tuple[str, ...] = ()
        if result.state is PortState.SSH and result.banner is not None:
            cached_line, cached_keys = self._key_cache
            if cached_line == result.banner.line:
                host_keys = cached_keys
            else:
                host_keys = tuple(await self.key_fetcher(self.port))
                self._key_cache = (result.banner.line, host_keys)
            if result.banner.is_openssh and self.collect_diagnostics is not None:
                diagnostics = await self.collect_diagnostics()
        elif result.state is PortState.NOT_SSH:
            diagnostics = [NOT_SSH_DIAGNOSTIC]
        elif self.installed_keys is not None:  # nothing listens yet: sshd may start later
            host_keys = tuple(await self.installed_keys())
        new = Port22Status(result.state, result.banner, host_keys, tuple(diagnostics))
        if new == old:
            return False
        self.status = new
        self._log_change(old, new, result.detail)
        self.on_change()
        return True

    @staticmethod
    def _log_change(old: Port22Status, new: Port22Status, detail: str) -> None:
        if (old.state, old.banner) != (new.state, new.banner):
            if new.state is PortState.SSH and new.banner is not None:
                log.info("port 22 is an SSH server (%s): forwarding connections to it", new.banner.version)
            elif new.state is PortState.NOT_SSH:
                log.warning("%s (%s)", NOT_SSH_DIAGNOSTIC, detail)
            else:
                log.info("no SSH server on port 22: using the built-in server")
        for sentence in new.diagnostics:
            if sentence not in old.diagnostics and sentence != NOT_SSH_DIAGNOSTIC:
                log.warning("%s", sentence)

    def observe(self, result: ProbeResult) -> None:
        """A per-connection probe saw port 22; refresh now if that is news."""
        seen = (result.state, result.banner)
        if seen != (self.status.state, self.status.banner):
            self._poke.set()

    async def run(self) -> None:
        """Refresh forever, every ``interval`` seconds or at once when poked.

        Waits first: the agent refreshes once before its first report, so that report is right.
        """
        while True:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._poke.wait(), self.interval)
            self._poke.clear()
            try:
                await self.refresh()
            except Exception:
                log.exception("checking port 22 failed")
