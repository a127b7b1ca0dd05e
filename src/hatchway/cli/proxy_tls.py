"""TLS for ``hatchway proxy``'s minimal client (``wss://``), without asyncio.

The minimal client relays with one blocking thread per direction. An ``ssl.SSLSocket`` cannot
serve that: OpenSSL's connection object must not be read and written by two threads at once,
and a blocking read inside it would hold any lock that protected it. So the TLS state lives in
an ``ssl.SSLObject`` over two memory BIOs, and the socket stays plain: each thread does its own
blocking I/O on the socket and takes the TLS lock only to move bytes through OpenSSL, which never
blocks. Records leave in the order OpenSSL produced them because whoever takes them out of the
outgoing BIO holds the send lock until they are on the socket.

Certificates are checked as everywhere else: ``ssl.create_default_context()`` (the system's
trust store, or ``SSL_CERT_FILE``/``SSL_CERT_DIR``), the host name of the server URL.
"""

from __future__ import annotations

import socket
import ssl
import threading
from collections.abc import Sequence

#: What one receive takes from the socket.
RECV_SIZE = 256 * 1024


class TlsSocket:
    """The parts of ``socket.socket`` the proxy uses, over TLS, safe for one reading thread and
    any number of sending ones."""

    def __init__(self, sock: socket.socket, hostname: str, context: ssl.SSLContext | None = None) -> None:
        """Handshake over ``sock`` (blocking, within its timeout); certificate errors raise
        ``ssl.SSLCertVerificationError``."""
        self._sock = sock
        self._in, self._out = ssl.MemoryBIO(), ssl.MemoryBIO()
        ctx = context or ssl.create_default_context()
        self._tls = ctx.wrap_bio(self._in, self._out, server_hostname=hostname)
        self._tls_lock = threading.Lock()  # the SSLObject and its BIOs
        self._send_lock = threading.Lock()  # taking records out and putting them on the socket
        self._received = memoryview(bytearray(RECV_SIZE))
        while True:
            try:
                self._tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                self._flush()
                if not self._feed():
                    raise ConnectionResetError("the server closed the connection during the TLS handshake") from None
        self._flush()

    def _feed(self) -> bool:
        """One blocking receive into the incoming BIO; False at the end of the stream. Only
        the reading thread (or the handshake, before there is one) calls this."""
        n = self._sock.recv_into(self._received)
        with self._tls_lock:
            if n:
                self._in.write(self._received[:n])
            else:
                self._in.write_eof()
            pending = self._out.pending
        if pending:  # what reading produced (a key update's answer) goes out now
            self._flush()
        return bool(n)

    def _flush(self) -> None:
        with self._send_lock:
            with self._tls_lock:
                records = self._out.read()
            if records:
                self._sock.sendall(records)

    def sendmsg(self, buffers: Sequence[bytes | memoryview]) -> int:
        """Encrypt and send all of ``buffers``; returns their length (nothing is sent partly)."""
        n = 0
        with self._send_lock:
            with self._tls_lock:
                for b in buffers:
                    n += self._tls.write(b)
                records = self._out.read()
            self._sock.sendall(records)
        return n

    def sendall(self, data: bytes) -> None:
        self.sendmsg([data])

    def _read_held(self, buffer: memoryview) -> int | None:
        """All the plaintext the received records hold, up to ``len(buffer)`` (OpenSSL hands
        out one record, at most 16 KiB, per read: taking them all keeps the proxy's work per
        chunk as on ``ws://``); None when there is none yet, 0 at the end of the stream."""
        n = 0
        with self._tls_lock:
            while n < len(buffer):
                try:
                    k = self._tls.read(len(buffer) - n, buffer[n:])
                except ssl.SSLWantReadError:
                    break
                except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                    return n
                if not k:  # the end of the stream
                    return n
                n += k
        return n or None

    def recv_into(self, buffer: memoryview | bytearray) -> int:
        """Blocking: at least one byte of plaintext, or 0 when the server ended the stream."""
        view = memoryview(buffer).cast("B")
        while True:
            n = self._read_held(view)
            if n is not None:
                return n
            if not self._feed():
                return self._read_held(view) or 0

    def recv(self, size: int) -> bytes:
        buffer = bytearray(size)
        return bytes(buffer[: self.recv_into(buffer)])

    def settimeout(self, timeout: float | None) -> None:
        self._sock.settimeout(timeout)

    def shutdown(self, how: int) -> None:
        self._sock.shutdown(how)

    def close(self) -> None:
        self._sock.close()
