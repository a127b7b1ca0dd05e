"""Pure and small-I/O parts of the built-in server's features: settings, SFTP file operations,
forwarding sockets, X11 authentication, MOTD, and the asyncssh internals we rely on."""

from __future__ import annotations

import asyncio
import concurrent.futures
import errno
import os
import socket
import stat
from pathlib import Path

import asyncssh
import pytest

from hatchway.sshd.config import BuiltinSSHConfig, parse_accept_env, parse_flag
from hatchway.sshd.env import SessionIdentity, build_session_env
from hatchway.sshd.forward import (
    bind_addresses,
    bind_tcp,
    bind_unix,
    open_failure,
    remove_socket_file,
)
from hatchway.sshd.session import SessionChannel, _read_session_files, terminal_text
from hatchway.sshd.sftp import (
    HatchwaySFTPServer,
    _realpath,
    _rename,
    _setstat,
    expand_path,
    open_flags,
)
from hatchway.sshd.x11 import valid_auth, xauth_commands

# ---- settings ----------------------------------------------------------------------------------


def test_config_defaults_are_openssh_like() -> None:
    c = BuiltinSSHConfig.from_environ({})
    assert c == BuiltinSSHConfig()
    assert (c.accept_env, c.login_grace, c.keepalive_interval, c.keepalive_count_max) == ((), 60.0, 15.0, 3)
    assert (c.max_sessions, c.max_channels, c.motd_path, c.x11_display_offset) == (10, 256, Path("/etc/motd"), 10)
    assert c.allow_forwarding and c.allow_agent_forwarding and c.allow_x11_forwarding and not c.gateway_ports
    assert c.problems == ()


def test_config_from_environment() -> None:
    c = BuiltinSSHConfig.from_environ({
        "HATCHWAY_SSH_ACCEPT_ENV": "EDITOR, GIT_*  TZ",
        "HATCHWAY_SSH_LOGIN_GRACE": "5",
        "HATCHWAY_SSH_KEEPALIVE_INTERVAL": "0",
        "HATCHWAY_SSH_KEEPALIVE_COUNT": "7",
        "HATCHWAY_SSH_MAX_SESSIONS": "3",
        "HATCHWAY_SSH_MAX_CHANNELS": "40",
        "HATCHWAY_SSH_MOTD": "",
        "HATCHWAY_SSH_X11_DISPLAY_OFFSET": "20",
        "HATCHWAY_SSH_FORWARDING": "no",
        "HATCHWAY_SSH_AGENT_FORWARDING": "off",
        "HATCHWAY_SSH_X11_FORWARDING": "false",
        "HATCHWAY_SSH_GATEWAY_PORTS": "yes",
        "UNRELATED": "x",
    })
    assert c.accept_env == ("EDITOR", "GIT_*", "TZ")
    assert (c.login_grace, c.keepalive_interval, c.keepalive_count_max) == (5.0, 0.0, 7)
    assert (c.max_sessions, c.max_channels, c.motd_path, c.x11_display_offset) == (3, 40, None, 20)
    assert not (c.allow_forwarding or c.allow_agent_forwarding or c.allow_x11_forwarding)
    assert c.gateway_ports and c.problems == ()


def test_config_bad_values_keep_defaults_and_are_reported() -> None:
    c = BuiltinSSHConfig.from_environ({
        "HATCHWAY_SSH_LOGIN_GRACE": "soon",
        "HATCHWAY_SSH_MAX_SESSIONS": "0",
        "HATCHWAY_SSH_KEEPALIVE_INTERVAL": "nan",
        "HATCHWAY_SSH_FORWARDING": "maybe",
        "HATCHWAY_SSH_ACCEPT_ENV": "OK_NAME bad=name $(rm)",
    })
    assert (c.login_grace, c.max_sessions, c.keepalive_interval, c.allow_forwarding) == (60.0, 10, 15.0, True)
    assert c.accept_env == ("OK_NAME",)
    assert len(c.problems) == 6, c.problems
    assert any("LOGIN_GRACE='soon'" in p for p in c.problems)


def test_config_channels_never_below_sessions_and_accept_env_merge() -> None:
    c = BuiltinSSHConfig.from_environ({"HATCHWAY_SSH_MAX_SESSIONS": "50", "HATCHWAY_SSH_MAX_CHANNELS": "5"})
    assert (c.max_sessions, c.max_channels) == (50, 50)
    assert c.with_accept_env(["A", "B*", "A"]).with_accept_env(["C"]).accept_env == ("A", "B*", "C")


@pytest.mark.parametrize("text,value", [("yes", True), ("No", False), ("1", True), ("off", False), ("x", None)])
def test_parse_flag(text: str, value: bool | None) -> None:
    assert parse_flag(text) is value


def test_parse_accept_env() -> None:
    assert parse_accept_env("A,B  C\tLC_*,,") == (("A", "B", "C", "LC_*"), [])
    assert parse_accept_env("X=1 Y") == (("Y",), ["X=1"])


def test_server_takes_config_and_extra_accept_env(tmp_path: Path) -> None:
    from hatchway.sshd.server import BuiltinSSHServer

    srv = BuiltinSSHServer(host_key_path=tmp_path / "k", authorized_keys_path=tmp_path / "ak", base_env={},
                           accepted_client_env=["EXTRA"], config=BuiltinSSHConfig(accept_env=("GIT_*",)))
    try:
        assert srv.accepted_client_env == ("GIT_*", "EXTRA")
    finally:
        asyncio.run(srv.close())


# ---- environment layers for forwarding ---------------------------------------------------------


def test_forwarded_env_only_when_asked_and_user_file_still_wins() -> None:
    ident = SessionIdentity(user="dev", home=Path("/home/dev"), shell="/bin/bash")
    base = {"SSH_AUTH_SOCK": "/stale/agent", "DISPLAY": ":1"}
    env = build_session_env(base_env=base, identity=ident, client_addr=None, server_addr=None)
    assert "SSH_AUTH_SOCK" not in env and env["DISPLAY"] == ":1"
    env = build_session_env(base_env=base, identity=ident, client_addr=None, server_addr=None,
                            forwarded_env={"SSH_AUTH_SOCK": "/tmp/ssh-x/agent.1", "DISPLAY": "localhost:10.0"},
                            user_environment="DISPLAY=:5\n")
    assert (env["SSH_AUTH_SOCK"], env["DISPLAY"]) == ("/tmp/ssh-x/agent.1", ":5")


# ---- MOTD ---------------------------------------------------------------------------------------


def test_session_files_motd_and_hushlogin(tmp_path: Path) -> None:
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "environment").write_text("A=1\n")
    motd = tmp_path / "motd"
    motd.write_bytes(b"hello\nworld\n")
    files = _read_session_files(home, motd)
    assert (files.environment, files.home_ok, files.motd) == ("A=1\n", True, b"hello\nworld\n")
    assert _read_session_files(home, None).motd is None  # not an interactive login
    assert _read_session_files(home, tmp_path / "missing").motd is None
    motd.write_bytes(b"")
    assert _read_session_files(home, motd).motd is None
    motd.write_bytes(b"x")
    (home / ".hushlogin").touch()
    assert _read_session_files(home, motd).motd is None
    assert _read_session_files(tmp_path / "nohome", motd).home_ok is False


def test_session_files_skip_an_environment_that_is_not_a_regular_file(tmp_path: Path) -> None:
    """A FIFO at ~/.ssh/environment would hold the session's setup thread for ever."""
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    os.mkfifo(home / ".ssh" / "environment")
    assert _read_session_files(home, None).environment is None


def test_terminal_text() -> None:
    assert terminal_text(b"a\nb\r\nc") == b"a\r\nb\r\nc"


# ---- SFTP file operations ------------------------------------------------------------------------


def test_open_flags() -> None:
    from asyncssh.sftp import (
        FXF_APPEND,
        FXF_CREAT,
        FXF_EXCL,
        FXF_READ,
        FXF_TRUNC,
        FXF_WRITE,
    )

    base = os.O_CLOEXEC | os.O_NOCTTY
    assert open_flags(FXF_READ) == os.O_RDONLY | base
    assert open_flags(FXF_WRITE | FXF_CREAT | FXF_TRUNC) == os.O_WRONLY | os.O_CREAT | os.O_TRUNC | base
    assert open_flags(FXF_READ | FXF_WRITE | FXF_APPEND) == os.O_RDWR | os.O_APPEND | base
    assert open_flags(FXF_WRITE | FXF_CREAT | FXF_EXCL) == os.O_WRONLY | os.O_CREAT | os.O_EXCL | base


def test_rename_never_replaces_but_posix_rename_does(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.write_text("A")
    b.write_text("B")
    with pytest.raises(FileExistsError):
        _rename(bytes(a), bytes(b))
    assert (a.read_text(), b.read_text()) == ("A", "B")
    _rename(bytes(a), bytes(tmp_path / "c"))
    assert not a.exists() and (tmp_path / "c").read_text() == "A"
    (tmp_path / "d").mkdir()
    with pytest.raises(FileExistsError):
        _rename(bytes(tmp_path / "d"), bytes(b))
    _rename(bytes(tmp_path / "d"), bytes(tmp_path / "e"))
    assert (tmp_path / "e").is_dir()


def test_realpath_allows_only_a_missing_last_component(tmp_path: Path) -> None:
    (tmp_path / "dir").mkdir()
    (tmp_path / "link").symlink_to("dir")
    assert _realpath(bytes(tmp_path / "link" / "new")) == bytes(tmp_path / "dir" / "new")
    with pytest.raises(FileNotFoundError):
        _realpath(bytes(tmp_path / "missing" / "new"))


def test_setstat_size_mode_times(tmp_path: Path) -> None:
    f = tmp_path / "f"
    f.write_bytes(b"0123456789")
    _setstat(bytes(f), asyncssh.SFTPAttrs(size=4, permissions=0o100640, atime=1000, mtime=2000, mtime_ns=5))
    st = f.stat()
    assert (f.read_bytes(), stat.S_IMODE(st.st_mode), st.st_atime_ns, st.st_mtime_ns) == (
        b"0123", 0o640, 1000 * 10**9, 2000 * 10**9 + 5)
    (tmp_path / "l").symlink_to("f")
    _setstat(bytes(tmp_path / "l"), asyncssh.SFTPAttrs(permissions=0o600), follow=False)  # no-op on a link
    with pytest.raises(asyncssh.SFTPOpUnsupported):
        _setstat(bytes(tmp_path / "l"), asyncssh.SFTPAttrs(size=1), follow=False)


class _FakeChan:
    def get_connection(self) -> None:
        return None


def test_sftp_server_paths_relative_to_home_and_io_off_the_loop(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    pool = concurrent.futures.ThreadPoolExecutor(2)
    loop_thread: list[int] = []
    io_threads: set[int] = set()
    real_pread = os.pread

    def spy_pread(fd: int, n: int, off: int) -> bytes:
        import threading

        io_threads.add(threading.get_ident())
        return real_pread(fd, n, off)

    async def scenario() -> None:
        import threading

        loop_thread.append(threading.get_ident())
        server = HatchwaySFTPServer(_FakeChan(), user="dev", home=home, executor=pool)
        assert server.map_path(b"") == bytes(home)
        assert server.map_path(b"a/b") == bytes(home / "a" / "b")
        assert server.map_path(b"/etc") == b"/etc"
        assert await server.realpath(b".") == bytes(home)
        (home / "sub").mkdir()
        assert await server.expand_path(b"~dev/sub/../new") == bytes(home / "new")
        with pytest.raises(asyncssh.SFTPNoSuchFile, match="^no such user$"):
            await server.expand_path(b"~root/x")
        with pytest.raises(FileNotFoundError):
            await server.expand_path(b"~/missing/x")  # only the last part may be missing
        from asyncssh.sftp import FXF_CREAT, FXF_READ, FXF_WRITE

        f = await server.open(b"file", FXF_READ | FXF_WRITE | FXF_CREAT, asyncssh.SFTPAttrs(permissions=0o600))
        assert await server.write(f, 0, b"hello world") == 11
        assert await server.read(f, 6, 100) == b"world"
        attrs = await server.fstat(f)
        assert (attrs.size, stat.S_IMODE(attrs.permissions or 0)) == (11, 0o600)
        await server.close(f)
        names = [n.filename async for n in server.scandir(b".")]
        assert sorted(names) == [b".", b"..", b"file", b"sub"]
        longnames = [n.longname async for n in server.scandir(b".")]
        assert any(ln.endswith(b" file") and ln.startswith(b"-rw-------") for ln in longnames)
        await server.symlink(b"file", b"link")
        assert await server.readlink(b"link") == b"file"
        assert os.readlink(home / "link") == "file"
        vfs = await server.statvfs(b".")
        assert vfs.f_bsize > 0
        # a handle the client never closed is closed at the end
        g = await server.open(b"file", FXF_READ, asyncssh.SFTPAttrs())
        fd = g.fd
        await server.exit()
        await asyncio.sleep(0.1)
        with pytest.raises(OSError) as info:
            os.fstat(fd)
        assert info.value.errno == errno.EBADF

    os.pread = spy_pread  # type: ignore[assignment]
    try:
        asyncio.run(scenario())
    finally:
        os.pread = real_pread  # type: ignore[assignment]
        pool.shutdown()
    assert io_threads and loop_thread[0] not in io_threads


@pytest.mark.parametrize(("path", "expanded"), [
    (b"", b"/home/dev"),  # sftp-server's "." in the home directory
    (b"~", b"/home/dev"),
    (b"~/", b"/home/dev/"),
    (b"~//x/y", b"/home/dev/x/y"),
    (b"~dev", b"/home/dev/"),  # tilde_expand adds the slash; realpath takes it away again
    (b"~dev/", b"/home/dev/"),
    (b"~dev/x", b"/home/dev/x"),
    (b"~dev//x", b"/home/dev/x"),
    (b"x/y", b"/home/dev/x/y"),
    (b"/etc/~dev", b"/etc/~dev"),
    (b"./~dev", b"/home/dev/./~dev"),
    (b"~root", None),  # another user: "no such user", as sftp-server says of an unknown one
    (b"~root/x", None),
    (b"~devx/x", None),
    (b"~de", None),
])
def test_expand_path_like_sftp_server(path: bytes, expanded: bytes | None) -> None:
    assert expand_path(path, b"dev", b"/home/dev") == expanded


# ---- forwarding sockets -------------------------------------------------------------------------


def test_bind_addresses_gateway_ports() -> None:
    v4, v6 = socket.AF_INET, socket.AF_INET6
    loop = [(v4, "127.0.0.1"), (v6, "::1")]
    for host in ("", "*", "0.0.0.0", "localhost", "192.0.2.7", "::"):
        assert bind_addresses(host, gateway_ports=False) == loop, host
    assert bind_addresses("127.0.0.1", False) == [(v4, "127.0.0.1")]
    assert bind_addresses("::1", False) == [(v6, "::1")]
    assert bind_addresses("", True) == [(v4, "0.0.0.0"), (v6, "::")]
    assert bind_addresses("192.0.2.7", True) == [(v4, "192.0.2.7")]
    assert bind_addresses("localhost", True) == loop


def test_bind_tcp_same_port_on_both_loopbacks() -> None:
    socks, port = bind_tcp([(socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")], 0)
    try:
        assert port > 0 and all(s.getsockname()[1] == port for s in socks)
        with pytest.raises(OSError) as info:
            bind_tcp([(socket.AF_INET, "127.0.0.1")], port)
        assert info.value.errno == errno.EADDRINUSE
    finally:
        for s in socks:
            s.close()


def test_bind_unix_mode_refuses_live_replaces_stale(tmp_path: Path) -> None:
    path = str(tmp_path / "s.sock")
    sock, _ = bind_unix(path)
    try:
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        assert sorted(os.listdir(tmp_path)) == ["s.sock"]  # no temporary left behind
        with pytest.raises(OSError) as info:
            bind_unix(path)  # somebody listens there
        assert info.value.errno == errno.EADDRINUSE
    finally:
        sock.close()
    # the listener is gone but its file stays: stale, so it is replaced
    sock2, ident2 = bind_unix(path)
    sock2.close()
    remove_socket_file(path, (0, 0))  # not ours: kept
    assert os.path.exists(path)
    remove_socket_file(path, ident2)
    assert not os.path.exists(path)
    # a regular file is never replaced
    Path(path).write_text("data")
    with pytest.raises(OSError):
        bind_unix(path)
    assert Path(path).read_text() == "data"


def test_bind_unix_long_directory_falls_back(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * (100 - len(str(tmp_path))))
    deep.mkdir()
    path = str(deep / "s")
    assert len(path) < 108 < len(path) + 20
    sock, ident = bind_unix(path)
    sock.close()
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    remove_socket_file(path, ident)


def test_open_failure_reasons_match_openssh() -> None:
    assert open_failure(ConnectionRefusedError(errno.ECONNREFUSED, "Connect call failed ('127.0.0.1', 1)")).reason \
        == "Connection refused"
    assert open_failure(TimeoutError()).reason == "Connection timed out"
    assert open_failure(socket.gaierror(-2, "Name or service not known")).code == asyncssh.OPEN_CONNECT_FAILED


# ---- X11 ------------------------------------------------------------------------------------------


def test_x11_auth_validation_and_xauth_commands() -> None:
    assert valid_auth("MIT-MAGIC-COOKIE-1", "0123456789abcdefABCDEF0123456789")
    assert not valid_auth("MIT-MAGIC-COOKIE-1", "abc")  # odd length
    assert not valid_auth("MIT-MAGIC-COOKIE-1", "00\nadd evil")
    assert not valid_auth("MIT MAGIC", "00")
    assert not valid_auth("", "00")
    assert xauth_commands(10, 0, "MIT-MAGIC-COOKIE-1", "ABCD") == (
        b"remove unix:10.0\nadd unix:10.0 MIT-MAGIC-COOKIE-1 abcd\n")


# ---- what we rely on inside asyncssh (fail here, loudly, if an upgrade moves it) ----------------


def test_asyncssh_internals_we_use() -> None:
    from asyncssh.channel import SSHServerChannel
    from asyncssh.connection import SSHServerConnection
    from asyncssh.sftp import run_sftp_server
    from asyncssh.stream import SSHServerStreamSession

    assert callable(run_sftp_server) and SSHServerStreamSession
    for name in ("_process_auth_agent_req_at_openssh_dot_com_request", "_process_x11_req_request",
                 "_process_exec_request", "_process_subsystem_request", "_start_session", "_report_response"):
        assert hasattr(SSHServerChannel, name), name
    for name in ("create_agent_channel", "create_x11_connection", "create_connection", "create_unix_connection",
                 "create_server_channel", "_report_global_response", "_process_global_request"):
        assert hasattr(SSHServerConnection, name), name
    assert issubclass(SessionChannel, SSHServerChannel)
    # authkeys._OpenSSHKeys answers asyncssh's matches through these (it calls them for every key)
    assert callable(asyncssh.SSHAuthorizedKeys.validate) and callable(asyncssh.SSHAuthorizedKeys.validate_x509)
    assert not set(vars(SessionChannel)) - {"owner", "_defer", "_command_forced", "__module__", "__doc__", "__annotations__",
                                            "_process_auth_agent_req_at_openssh_dot_com_request",
                                            "_process_x11_req_request", "_process_exec_request",
                                            "_process_subsystem_request",
                                            "_process_eow_at_openssh_dot_com_request",
                                            "__parameters__", "__orig_bases__"}
    # A request asyncssh does not handle reaches a method named after it (eow@openssh.com).
    from asyncssh.misc import map_handler_name

    assert "_process_" + map_handler_name("eow@openssh.com") + "_request" in vars(SessionChannel)
