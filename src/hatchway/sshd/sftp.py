"""The ``sftp`` subsystem of the built-in server (also what ``scp`` uses in its default mode).

asyncssh implements the SFTP protocol (``SFTPServerHandler``: packets, handles, extensions such
as ``statvfs@openssh.com``, ``posix-rename@openssh.com``, ``hardlink@openssh.com``,
``fsync@openssh.com`` and ``limits@openssh.com``); :class:`HatchwaySFTPHandler` adds
``expand-path@openssh.com`` (what ``scp`` in its default SFTP mode needs for ``host:~user/x``),
and :class:`HatchwaySFTPServer` supplies the file system side. Its
default implementation calls ``os`` functions directly, which would block the event loop that
also carries every other session of the agent. Here every method is a coroutine and every
system call that touches the file system runs on a small bounded thread pool owned by the
server, so a slow disk stalls one SFTP request, never the agent.

Like OpenSSH's sftp-server, no shell is involved (a broken ``.bashrc`` cannot break SFTP) and
relative paths are relative to the user's home directory, where a session starts.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import errno
import logging
import os
import posixpath
import stat
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, TypeVar

import asyncssh
from asyncssh.packet import SSHPacket
from asyncssh.sftp import (
    FXF_APPEND,
    FXF_CREAT,
    FXF_EXCL,
    FXF_READ,
    FXF_TRUNC,
    FXF_WRITE,
    FXP_NAME,
    SFTPServerHandler,
)

log = logging.getLogger("hatchway.sshd")

T = TypeVar("T")
#: SFTP version we speak; OpenSSH's clients use 3.
SFTP_VERSION = 3


class OpenFile:
    """An SFTP file handle: a plain fd (positioned I/O, so no shared file offset)."""

    __slots__ = ("fd", "path")

    def __init__(self, fd: int, path: bytes) -> None:
        self.fd = fd
        self.path = path

    def fileno(self) -> int:
        return self.fd

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        # Only asyncssh's own ranges@asyncssh.com extension calls this (SEEK_DATA/SEEK_HOLE):
        # lseek never waits for the disk.
        return os.lseek(self.fd, offset, whence)


def open_flags(pflags: int) -> int:
    """SFTP v3 open flags to os.open flags (as OpenSSH's sftp-server maps them)."""
    if pflags & FXF_READ and pflags & FXF_WRITE:
        flags = os.O_RDWR
    elif pflags & FXF_WRITE:
        flags = os.O_WRONLY
    else:
        flags = os.O_RDONLY
    if pflags & FXF_APPEND:
        flags |= os.O_APPEND
    if pflags & FXF_CREAT:
        flags |= os.O_CREAT
    if pflags & FXF_TRUNC:
        flags |= os.O_TRUNC
    if pflags & FXF_EXCL:
        flags |= os.O_EXCL
    return flags | os.O_CLOEXEC | os.O_NOCTTY


def expand_path(path: bytes, user: bytes, home: bytes) -> bytes | None:
    """``expand-path@openssh.com``'s path before it is made canonical, as sftp-server expands
    it: ``~``, ``~/x``, ``~USER`` and ``~USER/x`` for the workspace's own user name are in the
    home directory (where a session starts, so relative paths are too); None for any other
    ``~name``: this server serves one user, and answers like sftp-server for an unknown one."""
    if not path:
        return home
    if not path.startswith(b"~"):
        return posixpath.join(home, path)  # an absolute path stays as it is
    name, slash, rest = path[1:].partition(b"/")
    if name not in (b"", user):
        return None
    rest = rest.lstrip(b"/")
    return home if not slash and not name else posixpath.join(home, rest) if rest else home + b"/"


# ---- the blocking parts (run on the pool) -----------------------------------------------------


def _pwrite_all(fd: int, data: bytes, offset: int) -> int:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view = view[n:]
        offset += n
    return len(data)


def _attrs(fn: Callable[..., os.stat_result], arg: Any) -> asyncssh.SFTPAttrs:
    # SFTPAttrs.from_local looks up user and group names (NSS: maybe files): keep it here.
    return asyncssh.SFTPAttrs.from_local(fn(arg))


def _setstat(target: bytes | int, attrs: asyncssh.SFTPAttrs, follow: bool = True) -> None:
    """Apply what the client set, in sftp-server's order: size, mode, times, owner."""
    if attrs.size is not None:
        if not follow:
            raise asyncssh.SFTPOpUnsupported("setting size without following symlinks")
        os.truncate(target, attrs.size)
    if attrs.permissions is not None:
        if isinstance(target, int):
            os.fchmod(target, stat.S_IMODE(attrs.permissions))
        elif follow:
            os.chmod(target, stat.S_IMODE(attrs.permissions))
        else:
            st = os.lstat(target)
            if not stat.S_ISLNK(st.st_mode):  # Linux cannot chmod a symlink itself
                os.chmod(target, stat.S_IMODE(attrs.permissions))
    if attrs.atime is not None or attrs.mtime is not None:
        if attrs.atime is None or attrs.mtime is None:
            st = os.stat(target, follow_symlinks=follow) if not isinstance(target, int) else os.fstat(target)
        atime_ns = (attrs.atime * 10**9 + (attrs.atime_ns or 0)) if attrs.atime is not None else st.st_atime_ns
        mtime_ns = (attrs.mtime * 10**9 + (attrs.mtime_ns or 0)) if attrs.mtime is not None else st.st_mtime_ns
        if isinstance(target, int):
            os.utime(target, ns=(atime_ns, mtime_ns))
        else:
            os.utime(target, ns=(atime_ns, mtime_ns), follow_symlinks=follow)
    if attrs.uid is not None or attrs.gid is not None:
        uid = -1 if attrs.uid is None else attrs.uid
        gid = -1 if attrs.gid is None else attrs.gid
        if isinstance(target, int):
            os.fchown(target, uid, gid)
        else:
            os.chown(target, uid, gid, follow_symlinks=follow)


def _realpath(path: bytes) -> bytes:
    """Canonical path; like OpenSSH's, only the last component may be missing."""
    resolved = os.path.realpath(path)
    parent = os.path.dirname(resolved) or b"/"
    if not os.path.isdir(parent):
        raise OSError(errno.ENOENT, "No such file or directory", os.fsdecode(path))
    return resolved


def _rename(old: bytes, new: bytes) -> None:
    """SSH_FXP_RENAME (v3): never replaces an existing target, like OpenSSH's sftp-server."""
    st = os.lstat(old)
    if stat.S_ISREG(st.st_mode):
        try:
            os.link(old, new)  # atomic "fail if it exists"
        except OSError as exc:
            if exc.errno == errno.EEXIST:
                raise
            if os.path.lexists(new):
                raise OSError(errno.EEXIST, "File exists", os.fsdecode(new)) from None
            os.rename(old, new)  # file systems without hard links
        else:
            try:
                os.unlink(old)
            except OSError:
                with contextlib.suppress(OSError):
                    os.unlink(new)
                raise
    else:
        if os.path.lexists(new):
            raise OSError(errno.EEXIST, "File exists", os.fsdecode(new))
        os.rename(old, new)


def _close_all(fds: list[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


class HatchwaySFTPHandler(SFTPServerHandler):
    """asyncssh's SFTP protocol handler plus ``expand-path@openssh.com``, which OpenSSH's
    sftp-server offers and its ``scp`` requires for ``~user`` paths."""

    _extensions = [*SFTPServerHandler._extensions, (b"expand-path@openssh.com", b"1")]
    _return_types = {**SFTPServerHandler._return_types, b"expand-path@openssh.com": FXP_NAME}

    async def _process_expand_path(self, packet: SSHPacket) -> tuple[list[asyncssh.SFTPName], bool]:
        path = packet.get_string()
        packet.check_end()
        server = self._server
        assert isinstance(server, HatchwaySFTPServer)
        resolved = await server.expand_path(path)
        # sftp-server names it twice (file name and long name) and sends no attributes
        return [asyncssh.SFTPName(resolved, resolved)], False

    _packet_handlers = {**SFTPServerHandler._packet_handlers, b"expand-path@openssh.com": _process_expand_path}


async def run_sftp(server: HatchwaySFTPServer, reader: asyncssh.SSHReader[bytes],
                   writer: asyncssh.SSHWriter[bytes]) -> None:
    """Serve SFTP on a session's streams until the client ends it (what asyncssh's
    ``run_sftp_server`` does, with our handler)."""
    await HatchwaySFTPHandler(server, reader, writer, SFTP_VERSION).run()


class HatchwaySFTPServer(asyncssh.SFTPServer):
    """File system operations for one SFTP session, all off the event loop."""

    def __init__(self, chan: Any, *, user: str, home: Path, executor: concurrent.futures.Executor) -> None:
        super().__init__(chan)
        self._user = os.fsencode(user)
        self._home = os.fsencode(str(home))
        self._executor = executor
        self._files: set[OpenFile] = set()

    # ---- plumbing --------------------------------------------------------------------------

    async def _io(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.wrap_future(self._executor.submit(fn, *args))

    def map_path(self, path: bytes) -> bytes:
        """Relative paths (and the empty path) are relative to the home directory."""
        if not path:
            return self._home
        if path.startswith(b"/"):
            return path
        return posixpath.join(self._home, path)

    def reverse_map_path(self, path: bytes) -> bytes:
        return path

    def release(self) -> None:
        """Close every file the client left open (session teardown; the closes run on the pool)."""
        fds = [f.fd for f in self._files]
        self._files.clear()
        if fds:
            try:
                self._executor.submit(_close_all, fds)
            except RuntimeError:  # pool already shut down (server closing): close here
                _close_all(fds)

    # ---- files -----------------------------------------------------------------------------

    async def open(self, path: bytes, pflags: int, attrs: asyncssh.SFTPAttrs) -> OpenFile:
        mapped = self.map_path(path)
        mode = 0o666 if attrs.permissions is None else stat.S_IMODE(attrs.permissions)
        future = self._executor.submit(os.open, mapped, open_flags(pflags), mode)
        try:
            fd = await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            # The open may still complete in its thread: do not leak that descriptor.
            future.add_done_callback(
                lambda f: None if f.cancelled() or f.exception() else _close_all([f.result()])
            )
            raise
        handle = OpenFile(fd, mapped)
        self._files.add(handle)
        return handle

    async def close(self, file_obj: object) -> None:
        assert isinstance(file_obj, OpenFile)
        self._files.discard(file_obj)
        await self._io(os.close, file_obj.fd)

    async def read(self, file_obj: object, offset: int, size: int) -> bytes:
        assert isinstance(file_obj, OpenFile)
        return await self._io(os.pread, file_obj.fd, size, offset)

    async def write(self, file_obj: object, offset: int, data: bytes) -> int:
        assert isinstance(file_obj, OpenFile)
        return await self._io(_pwrite_all, file_obj.fd, data, offset)

    async def fstat(self, file_obj: object) -> asyncssh.SFTPAttrs:
        assert isinstance(file_obj, OpenFile)
        return await self._io(_attrs, os.fstat, file_obj.fd)

    async def fsetstat(self, file_obj: object, attrs: asyncssh.SFTPAttrs) -> None:
        assert isinstance(file_obj, OpenFile)
        await self._io(_setstat, file_obj.fd, attrs)

    async def fsync(self, file_obj: object) -> None:
        assert isinstance(file_obj, OpenFile)
        await self._io(os.fsync, file_obj.fd)

    async def fstatvfs(self, file_obj: object) -> os.statvfs_result:
        assert isinstance(file_obj, OpenFile)
        return await self._io(os.statvfs, file_obj.fd)

    # ---- paths -----------------------------------------------------------------------------

    async def lstat(self, path: bytes) -> asyncssh.SFTPAttrs:
        return await self._io(_attrs, os.lstat, self.map_path(path))

    async def stat(self, path: bytes) -> asyncssh.SFTPAttrs:
        return await self._io(_attrs, os.stat, self.map_path(path))

    async def setstat(self, path: bytes, attrs: asyncssh.SFTPAttrs) -> None:
        await self._io(_setstat, self.map_path(path), attrs)

    async def lsetstat(self, path: bytes, attrs: asyncssh.SFTPAttrs) -> None:
        await self._io(_setstat, self.map_path(path), attrs, False)

    async def scandir(self, path: bytes) -> AsyncIterator[asyncssh.SFTPName]:  # type: ignore[override]
        # The whole listing is read in one go on the pool: no directory fd stays open between
        # READDIR requests (a client that never closes the handle cannot leak it).
        for name in await self._io(self._list_dir, self.map_path(path)):
            yield name

    def _list_dir(self, path: bytes) -> list[asyncssh.SFTPName]:
        names: list[asyncssh.SFTPName] = []
        for dot in (b".", b".."):
            names.append(asyncssh.SFTPName(dot, attrs=asyncssh.SFTPAttrs.from_local(os.lstat(os.path.join(path, dot)))))
        with os.scandir(path) as entries:
            for entry in entries:
                try:
                    st = entry.stat(follow_symlinks=False)
                except FileNotFoundError:  # removed while we were listing
                    continue
                names.append(asyncssh.SFTPName(entry.name, attrs=asyncssh.SFTPAttrs.from_local(st)))
        for name in names:
            self.format_longname(name)  # "ls -l" text; user/group lookups, hence here
        return names

    async def remove(self, path: bytes) -> None:
        await self._io(os.remove, self.map_path(path))

    async def mkdir(self, path: bytes, attrs: asyncssh.SFTPAttrs) -> None:
        mode = 0o777 if attrs.permissions is None else stat.S_IMODE(attrs.permissions)
        await self._io(os.mkdir, self.map_path(path), mode)

    async def rmdir(self, path: bytes) -> None:
        await self._io(os.rmdir, self.map_path(path))

    async def realpath(self, path: bytes) -> bytes:
        return await self._io(_realpath, self.map_path(path))

    async def expand_path(self, path: bytes) -> bytes:
        """``expand-path@openssh.com``: ``~`` expanded (see :func:`expand_path`), then canonical."""
        expanded = expand_path(path, self._user, self._home)
        if expanded is None:
            raise asyncssh.SFTPNoSuchFile("no such user")  # sftp-server's words
        return await self._io(_realpath, expanded)

    async def rename(self, oldpath: bytes, newpath: bytes) -> None:
        await self._io(_rename, self.map_path(oldpath), self.map_path(newpath))

    async def posix_rename(self, oldpath: bytes, newpath: bytes) -> None:
        await self._io(os.replace, self.map_path(oldpath), self.map_path(newpath))

    async def readlink(self, path: bytes) -> bytes:
        return await self._io(os.readlink, self.map_path(path))

    async def symlink(self, oldpath: bytes, newpath: bytes) -> None:
        # The target is stored as given (relative targets stay relative to the link).
        await self._io(os.symlink, oldpath, self.map_path(newpath))

    async def link(self, oldpath: bytes, newpath: bytes) -> None:
        await self._io(os.link, self.map_path(oldpath), self.map_path(newpath))

    async def statvfs(self, path: bytes) -> os.statvfs_result:
        return await self._io(os.statvfs, self.map_path(path))

    async def exit(self) -> None:
        self.release()
