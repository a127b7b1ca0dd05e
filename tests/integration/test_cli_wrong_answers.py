"""The real CLI facing answers that are not Hatchway's API, from a loopback server that says
whatever a test tells it to: a reverse proxy's 502 page, a captive portal, a redirect, JSON cut
short or of another shape, a connection that drops mid-answer, something that is not HTTP.

Each ended in a Python traceback (JSONDecodeError, KeyError, TypeError, AttributeError,
RecursionError). Now each is one line on stderr saying what answered and what to check, with
exit status 1.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import socketserver
import subprocess
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from hatchway.bytepath.frames import OP_TEXT, frame_header
from hatchway.cli.proxy import GUID
from tests.helpers.cli import Cli, Result
from tests.helpers.server import HATCHWAY

ADVICE = (
    "check the URL (hatchway login URL) and that the Hatchway server is running there, behind its proxy if it has one"
)


def http(status: str, body: bytes = b"", content_type: str | None = "application/json", *extra: str) -> bytes:
    """One complete HTTP/1.1 answer, as bytes on the wire."""
    head = [f"HTTP/1.1 {status}", f"Content-Length: {len(body)}", "Connection: close", *extra]
    if content_type:
        head.append(f"Content-Type: {content_type}")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


class _Handler(socketserver.BaseRequestHandler):
    """Reads one request (head and body) and sends the server's canned answer verbatim."""

    server: Answering

    def handle(self) -> None:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = self.request.recv(65536)
            if not chunk:
                return
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        length = re.search(rb"(?im)^content-length:\s*(\d+)", head)
        while length and len(body) < int(length.group(1)):
            body += self.request.recv(65536)
        self.server.requests.append(head.split(b"\r\n", 1)[0].decode())
        answer = self.server.answer
        self.request.sendall(answer if isinstance(answer, bytes) else answer(head))


class Answering(socketserver.ThreadingTCPServer):
    """A loopback server answering every request with :attr:`answer` (bytes, or made from the
    request's head), then closing."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.answer: bytes | Callable[[bytes], bytes] = b""
        self.requests: list[str] = []
        self.url = f"http://127.0.0.1:{self.server_address[1]}"


@dataclass
class World:
    server: Answering
    cli: Cli
    tmp: Path

    def run(self, answer: bytes, *args: str, stdin: str | None = None) -> Result:
        self.server.answer = answer
        self.server.requests.clear()
        return self.cli.run(*(a.format(url=self.server.url, tmp=self.tmp) for a in args), stdin=stdin, timeout=30)

    def proxy(self, answer: bytes | Callable[[bytes], bytes], library: bool) -> Result:
        """``hatchway proxy dev`` as ssh runs it (with nothing to send): on the fast path, or
        through the websockets library, which a proxy setting selects (bypassed for loopback)."""
        self.server.answer = answer
        env = {**self.cli.env(), "http_proxy": "http://127.0.0.1:9", "no_proxy": "127.0.0.1"} if library else None
        p = subprocess.run([HATCHWAY, "proxy", "dev"], input="", capture_output=True, text=True, check=False,
                           env=env or self.cli.env(), timeout=30)
        return Result(p.returncode, p.stdout, p.stderr)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("wrong-answers")
    server = Answering()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    cli = Cli(tmp / "home")
    cli.config_dir.mkdir(parents=True)
    (cli.config_dir / "session.json").write_text(json.dumps({"url": server.url, "token": "hwt_x", "username": "bob"}))
    try:
        yield World(server, cli, tmp)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def one_line(r: Result) -> str:
    """The one line a refused command prints, once it has exited 1 without a traceback."""
    assert (r.code, r.out) == (1, ""), r
    assert r.err.endswith("\n") and r.err.count("\n") == 1, r.err
    return r.err[:-1]


BROKEN = re.escape("ended the connection without a complete HTTP answer (") + ".+" + re.escape(
    "); try again, and if it goes on, " + ADVICE
)  # the reason in the parentheses is httpx's

# What answers, and the rest of the line after "hatchway: the server at URL " (a pattern).
ANSWERS = {
    "nginx 502 page": (
        http("502 Bad Gateway", b"<html><head><title>502 Bad Gateway</title></head><body>nginx</body></html>\r\n",
             "text/html"),
        re.escape("answered 502 Bad Gateway with an HTML page, not Hatchway's API; " + ADVICE),
    ),
    "captive portal": (
        http("200 OK", b"<!DOCTYPE html><title>Sign in to the hotel Wi-Fi</title>", None),
        re.escape("answered 200 OK with an HTML page, not Hatchway's API; " + ADVICE),
    ),
    "redirect": (
        http("302 Found", b"", "text/html", "Location: https://portal.example/login?\x9b31m"),
        re.escape("answered 302 Found, a redirect to https://portal.example/login?\\x9b31m, not Hatchway's API; " + ADVICE),
    ),
    "empty body": (http("200 OK", b"", None), re.escape("answered 200 OK with an empty body, not Hatchway's API; " + ADVICE)),
    "plain text 503": (
        http("503 Service Unavailable", b"upstream connect error", "text/plain"),
        re.escape("answered 503 Service Unavailable with a text/plain body, not Hatchway's API; " + ADVICE),
    ),
    "JSON cut short": (
        http("200 OK", b'{"username": "bob", "ema'),
        re.escape("answered 200 OK with JSON cut short or malformed (Unterminated string starting at: line 1 column 21 "
                  "(char 20)); try again, and if it goes on, " + ADVICE),
    ),
    "JSON nested too deeply": (
        http("200 OK", b"[" * 100_000 + b"]" * 100_000),
        re.escape("answered 200 OK with JSON cut short or malformed (JSON nested too deeply to parse); try again, and "
                  "if it goes on, " + ADVICE),
    ),
    "JSON not UTF-8": (
        http("200 OK", b'{"username": "\xff"}'),
        re.escape("answered 200 OK with JSON cut short or malformed ('utf-8' codec can't decode byte 0xff in position "
                  "14: invalid start byte); try again, and if it goes on, " + ADVICE),
    ),
    "a gateway's JSON error": (
        http("401 Unauthorized", b'{"message": "Unauthorized"}'),
        re.escape("answered 401 Unauthorized with JSON that is not a Hatchway error; " + ADVICE),
    ),
    "FastAPI's own error shape": (
        http("422 Unprocessable Entity", b'{"detail": [{"loc": ["body"], "msg": "field required"}]}'),
        re.escape("answered 422 Unprocessable Entity with JSON that is not a Hatchway error; " + ADVICE),
    ),
    "dropped mid-answer": (
        b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"username": ',
        BROKEN,
    ),
    "not HTTP": (b"SSH-2.0-OpenSSH_9.2p1 Debian-2\r\n", BROKEN),
}


@pytest.mark.parametrize("case", list(ANSWERS))
def test_an_answer_that_is_not_hatchways_api_is_one_line_saying_so(world: World, case: str) -> None:
    answer, said = ANSWERS[case]
    line = one_line(world.run(answer, "whoami"))
    assert re.fullmatch(re.escape(f"hatchway: the server at {world.server.url} ") + said, line), line


def test_a_command_that_reads_nothing_in_the_answer_does_not_take_a_page_for_success(world: World) -> None:
    page = http("200 OK", b"<html>captive portal</html>", "text/html")
    line = one_line(world.run(page, "workspaces", "delete", "dev", "-y"))
    assert line == f"hatchway: the server at {world.server.url} answered 200 OK with an HTML page, not Hatchway's API; {ADVICE}"


def test_hatchways_own_error_is_shown_on_one_line_whatever_it_holds(world: World) -> None:
    error = http("409 Conflict", json.dumps({"error": "taken\nnow", "detail": "\x1b]0;pwned\x07rename it"}).encode())
    assert one_line(world.run(error, "whoami")) == "hatchway: taken\\nnow: \\x1b]0;pwned\\x07rename it"


# Every command that reads the answer, with what it needs to get as far as its first call.
READERS: list[tuple[tuple[str, ...], str | None]] = [
    (("login", "{url}", "--username", "bob", "--password-stdin"), "bob-password\n"),
    (("whoami",), None),
    (("whoami", "--json"), None),
    (("password", "--stdin"), "old-password\nnew-password\n"),
    (("users", "list"), None),
    (("users", "create", "carol", "--email", "carol@example.com"), None),
    (("users", "set-password", "carol", "--password-stdin"), "carol-password\n"),
    (("sessions", "list"), None),
    (("sessions", "revoke", "--others"), None),
    (("sessions", "revoke", "abcd"), None),
    (("keys", "show"), None),
    (("keys", "download", "--output", "{tmp}/key"), None),
    (("keys", "regenerate", "-y"), None),
    (("providers", "list"), None),
    (("providers", "create", "byo", "--kind", "manual"), None),
    (("providers", "edit", "byo", "--external-connect", "off"), None),
    (("workspaces", "create", "dev", "--provider", "byo"), None),
    (("workspaces", "list"), None),
    (("workspaces", "show", "dev"), None),
    (("workspaces", "start", "dev"), None),
    (("workspaces", "restart", "dev"), None),
    (("workspaces", "stop", "dev"), None),
    (("workspaces", "agent-token", "dev"), None),
    (("audit", "list"), None),
    (("audit", "connections"), None),
    (("config-ssh", "--ssh-config", "{tmp}/ssh_config", "-y"), None),
    (("ssh", "dev"), None),
]

WRONG_SHAPE = re.compile(
    r"hatchway: the server at (?P<url>\S+) answered (?P<request>[A-Z]+ /api/v1/\S+) with JSON that Hatchway \S+ does not "
    r'send there \(the answer(\[0\])? (is a list, not an object|is an object, not a list|has no "\w+")\); check the URL '
    r"\(hatchway login URL\) and that the server there runs Hatchway \S+, as this CLI does"
)


@pytest.mark.parametrize("body", [{"unexpected": 1}, [{"unexpected": 1}]], ids=["object", "list"])
@pytest.mark.parametrize(("args", "stdin"), READERS, ids=[" ".join(a) for a, _ in READERS])
def test_json_of_another_shape_is_one_line_naming_what_is_wrong(
    world: World, args: tuple[str, ...], stdin: str | None, body: object
) -> None:
    line = one_line(world.run(http("200 OK", json.dumps(body).encode()), *args, stdin=stdin))
    m = WRONG_SHAPE.fullmatch(line)
    assert m, line
    assert m["url"] == world.server.url
    assert m["request"] == world.server.requests[-1].rsplit(" ", 1)[0].partition("?")[0]  # the one that failed


def upgraded_then(text: bytes) -> Callable[[bytes], bytes]:
    """An answer that accepts the WebSocket upgrade, then sends ``text`` as a text frame (how
    the server says why it refuses or ends an SSH stream)."""

    def answer(head: bytes) -> bytes:
        key = re.search(rb"(?im)^sec-websocket-key:\s*(\S+)", head)
        assert key
        accept = base64.b64encode(hashlib.sha1(key[1] + GUID).digest())
        return (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n" + frame_header(OP_TEXT, len(text)) + text)

    return answer


AT = "the server at {url} "
NOT_HTTP = AT + "did not answer the WebSocket upgrade in HTTP; " + ADVICE
INVALID = AT + "answered with an invalid WebSocket handshake ({reason}); " + ADVICE  # {reason}: the library's
NOT_THE_STREAM = AT + "answered HTTP 502, not Hatchway's SSH stream; " + ADVICE
# What answers the proxy, and the line after "hatchway: " on the fast path and through the
# websockets library.
PROXY_ANSWERS: dict[str, tuple[bytes | Callable[[bytes], bytes], str, str]] = {
    "an SSH server": (
        b"SSH-2.0-OpenSSH_9.2p1 Debian-2\r\nInvalid SSH identification string.\r\n",
        AT + "closed the connection during the WebSocket handshake",
        INVALID,
    ),
    "another protocol": (b"RTSP/1.0 200 OK\r\nCSeq: 1\r\n\r\n", NOT_HTTP, INVALID),
    "a status of other digits": ("HTTP/1.1 ²01 OK\r\n\r\n".encode("latin-1"), NOT_HTTP, INVALID),
    "a status of 5,000 digits": (b"HTTP/1.1 " + b"1" * 5000 + b" OK\r\n\r\n", NOT_HTTP, INVALID),
    "nginx 502 page": (
        http("502 Bad Gateway", b"<html><body>502 Bad Gateway</body></html>", "text/html"),
        NOT_THE_STREAM,
        NOT_THE_STREAM,
    ),
    "a refusal of several lines with terminal control": (
        upgraded_then(json.dumps({"type": "error", "error": "no\nway \x1b]0;pwned\x07"}).encode()),
        "no\\nway \\x1b]0;pwned\\x07",
        "no\\nway \\x1b]0;pwned\\x07",
    ),
    "an HTML page as a refusal": (
        upgraded_then(b"<html>\n<body>portal</body>\n</html>"),
        "<html>\\n<body>portal</body>\\n</html>",
        "<html>\\n<body>portal</body>\\n</html>",
    ),
    "a refusal that is not UTF-8": (
        upgraded_then(b"no \xff way"),
        "no \ufffd way",
        "no \ufffd way",
    ),
    "JSON of another shape as a refusal": (
        upgraded_then(b'{"error": {"code": 7}}'), '{"error": {"code": 7}}', '{"error": {"code": 7}}'
    ),
}


@pytest.mark.parametrize("library", [False, True], ids=["fast path", "websockets library"])
@pytest.mark.parametrize("case", list(PROXY_ANSWERS))
def test_the_proxy_says_in_one_line_what_answered(world: World, case: str, library: bool) -> None:
    answer, fast, through_library = PROXY_ANSWERS[case]
    pattern = re.escape("hatchway: " + (through_library if library else fast))
    pattern = pattern.replace(re.escape("{url}"), re.escape(world.server.url)).replace(re.escape("{reason}"), ".+")
    line = one_line(world.proxy(answer, library))
    assert re.fullmatch(pattern, line), line


HOSTILE = "\x1b]0;pwned\x07\x1b[2J\nforged line"
HOSTILE_SHOWN = "\\x1b]0;pwned\\x07\\x1b[2J\\nforged line"
WORKSPACE = {
    "id": "w1", "name": "dev", "owner": "bob", "provider": "byo", "provider_kind": "manual",
    "external_connect": True, "state": "running", "state_reason": HOSTILE, "env": {"EDITOR": HOSTILE},
    "agent_connected": True, "agent_last_seen": None, "os_user": HOSTILE, "ssh_mode": "openssh",
    "ssh_server_version": None, "host_keys": [], "diagnostics": [HOSTILE],
}
KEY = {"public_key": "ssh-ed25519 AAAA " + HOSTILE, "fingerprint": "SHA256:" + HOSTILE}
USER = {"username": "bob", "email": HOSTILE, "role": "member", "suspended": False, "has_password": True,
        "created_at": "2026-11-28T12:00:00+00:00", "ssh_key_fingerprint": "SHA256:x"}


@pytest.mark.parametrize(("args", "answer"), [
    (("workspaces", "show", "dev"), WORKSPACE),
    (("whoami",), USER),
    (("keys", "show"), KEY),
], ids=["workspaces show", "whoami", "keys show"])
def test_text_from_the_server_cannot_drive_the_terminal_or_add_lines(
    world: World, args: tuple[str, ...], answer: dict[str, object]
) -> None:
    """What the server (or an agent, through it) says is printed escaped: an escape sequence
    could retitle or clear the terminal, a line break could forge a line of the output."""
    r = world.run(http("200 OK", json.dumps(answer).encode()), *args)
    assert r.code == 0, r
    assert "\x1b" not in r.out and "\x07" not in r.out and "forged line\n" not in r.out.replace(HOSTILE_SHOWN, "")
    assert HOSTILE_SHOWN in r.out
    assert all("forged line" not in line or HOSTILE_SHOWN in line for line in r.out.splitlines())


def _key_pair() -> tuple[str, str]:
    """An Ed25519 key as the server hands it out: OpenSSH private key text, public key line."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    key = ed25519.Ed25519PrivateKey.generate()
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption()).decode()
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()
    return private, public


def workspaces_answer(names: list[str]) -> Callable[[bytes], bytes]:
    """The answers config-ssh asks for: the account's key, and workspaces of these names, each
    reachable (agent connected, with a host key of its own)."""
    private, public = _key_pair()
    answers = {
        "/api/v1/users/me/key": {"public_key": public, "fingerprint": "SHA256:x"},
        "/api/v1/users/me/key/private": {"private_key": private, "public_key": public, "fingerprint": "SHA256:x"},
        "/api/v1/workspaces": [
            {**WORKSPACE, "name": name, "os_user": "bob", "state_reason": None, "env": {}, "diagnostics": [],
             "host_keys": [_key_pair()[1]]}
            for name in names
        ],
    }

    def answer(head: bytes) -> bytes:
        path = head.split(b" ", 2)[1].decode().partition("?")[0]
        return http("200 OK", json.dumps(answers[path]).encode())

    return answer


UNUSABLE_NAMES = {
    "a line break": ("bad name\nHost *", "'bad name\\nHost *'"),
    "non-ASCII": ("dév", '"dév"'),
    "100 000 characters": ("a" * 100_000, repr("a" * 77 + "...")),
}


@pytest.mark.parametrize("case", list(UNUSABLE_NAMES))
def test_a_workspace_name_ssh_cannot_use_leaves_out_that_workspace_alone(
    world: World, tmp_path: Path, case: str
) -> None:
    """Its host keys were collected before its name was checked: config-ssh ended in a traceback
    and wrote no entries for anyone."""
    name, shown = UNUSABLE_NAMES[case]
    world.server.answer = workspaces_answer(["dev", name])
    cli = Cli(tmp_path / "home")
    cli.config_dir = world.cli.config_dir  # signed in to the answering server
    config = tmp_path / "ssh_config"
    r = cli.run("config-ssh", "--ssh-config", str(config), "-y")
    rule = ("its name cannot be an ssh host name (only ASCII letters, digits, '.', '_' and '-', at most 246 "
            "characters); to reach it with ssh, recreate it under such a name")
    key = cli.home / ".ssh" / f"hatchway_127.0.0.1_{world.server.url.rsplit(':', 1)[1]}"
    assert (r.code, r.out) == (0, f"You can now run: ssh -F {config} hatchway.dev   (configured: hatchway.dev)\n"), r
    assert r.err == f"hatchway: left out workspace {shown}: {rule}\nDownloaded your Hatchway SSH key to {key}\n"
    assert [line for line in config.read_text().splitlines() if line.startswith("Host ")] == ["Host hatchway.dev"]
    known = (world.cli.config_dir / "known_hosts").read_text().splitlines()[1:]
    assert [line.split()[0] for line in known] == ["hatchway.dev"]
    # hatchway ssh says the same of that workspace, on one line
    r = cli.run("ssh", name)
    assert (r.code, r.out, r.err) == (1, "", f"hatchway: workspace {shown} cannot be reached with ssh: {rule}\n")


def test_names_that_differ_only_in_case_configure_one_of_them(world: World, tmp_path: Path) -> None:
    world.server.answer = workspaces_answer(["DEV", "dev"])
    cli = Cli(tmp_path / "home")
    cli.config_dir = world.cli.config_dir
    config = tmp_path / "ssh_config"
    r = cli.run("config-ssh", "--ssh-config", str(config), "-y")
    assert (r.code, r.out) == (0, f"You can now run: ssh -F {config} hatchway.dev   (configured: hatchway.dev)\n"), r
    assert r.err.splitlines()[0] == (
        "hatchway: left out hatchway.DEV: ssh does not tell it apart from hatchway.dev (it ignores case), "
        "so only hatchway.dev is configured; rename one of the two workspaces"
    )
    assert [line for line in config.read_text().splitlines() if line.startswith("Host ")] == ["Host hatchway.dev"]


def test_a_refusal_quoting_the_server_is_one_escaped_line(world: World) -> None:
    failed = {**WORKSPACE, "state": "failed"}
    r = world.run(http("200 OK", json.dumps(failed).encode()), "workspaces", "start", "dev")
    assert (r.code, r.out) == (1, "")
    assert r.err == f'Starting workspace dev...\nhatchway: workspace "dev" is failed: {HOSTILE_SHOWN}\n'


@pytest.fixture
def silent_url() -> Iterator[str]:
    """A loopback port whose kernel takes connections (the listen backlog) that nobody ever
    answers: a server stuck or overloaded, as opposed to one that is not there."""
    import socket

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        listener.close()


def test_a_server_that_takes_the_connection_and_never_answers_is_not_called_unreachable(
    silent_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from hatchway.cli.common import ApiClient

    with pytest.raises(SystemExit) as exited:
        ApiClient(silent_url, timeout=0.3).call("GET", "/whoami")
    assert exited.value.code == 1
    assert capsys.readouterr().err == (
        f"hatchway: the Hatchway server at {silent_url} accepted the connection but sent no answer within 0.3 s; "
        "it may be overloaded or stuck: try again, and if it goes on, check the server's log\n"
    )


def test_the_proxy_says_the_same_of_a_server_that_never_answers_the_upgrade(silent_url: str) -> None:
    from hatchway.cli.proxy import Refused, _open, stream_url

    with pytest.raises(Refused) as refused:
        _open(stream_url(silent_url, "dev"), "token", silent_url, timeout=0.3)
    assert str(refused.value) == (
        f"the Hatchway server at {silent_url} accepted the connection but sent no answer to the WebSocket upgrade "
        "within 0.3 s; it may be overloaded or stuck: try again, and if it goes on, check the server's log"
    )


def test_a_port_nobody_listens_on_is_still_unreachable(capsys: pytest.CaptureFixture[str]) -> None:
    import socket

    from hatchway.cli.common import ApiClient

    with socket.socket() as probe:  # a port that was free a moment ago and is closed now
        probe.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{probe.getsockname()[1]}"
    with pytest.raises(SystemExit):
        ApiClient(url, timeout=0.3).call("GET", "/whoami")
    err = capsys.readouterr().err
    assert err.startswith(f"hatchway: cannot reach the Hatchway server at {url}: ")
    assert err.endswith("; is it running?\n")
