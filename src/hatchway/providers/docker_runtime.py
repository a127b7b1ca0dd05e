"""The agent runtime: how the agent gets into any image without the image containing Hatchway.

Every workspace container gets, read-only under ``/opt/hatchway``:

* ``runtime/`` — a self-contained copy of **the server's own Python interpreter**: the binary,
  its dynamic loader (``ld.so``) and every shared library it and its extension modules need
  (libc, libssl, libffi...), found with ``ldd`` on this machine, plus ``boot.py``;
* ``stdlib/`` (and ``dynload/``) — the server's standard library, bind-mounted as it is;
* ``path0``..``path3`` — the server's import directories (the one holding ``hatchway``, its
  site-packages), bind-mounted as they are.

The interpreter is started through its own loader with ``--library-path``, so it never uses the
image's libc and the image needs **no Python at all** — only a Linux userland for the same CPU
architecture as the server (and a shell for the built-in SSH server's sessions). The library
path applies to that process only: the shells the agent starts use the image's own libraries.

Host paths change when the server's Python or virtualenv changes, while a container's mounts
are fixed at creation. So containers mount stable paths in the data dir — symlinks that the
server points at its current interpreter each time it starts — and the copied part lives in
``build-<key>/`` directories reached through the ``runtime`` symlink, swapped atomically when
the key (a hash of the interpreter and every shared object it may load) changes.

:func:`parse_ldd`, :func:`runtime_key` and :func:`import_dirs` are pure; :func:`ensure_runtime`
does the I/O (blocking: run it in a thread).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import site
import subprocess
import sys
import sysconfig
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import hatchway
from hatchway.providers.base import SetupError
from hatchway.providers.docker_api import PATH_SLOTS, RUNTIME_ROOT, STDLIB_DIR, RuntimeMounts

BOOT_PY = f'''\
"""Started by Hatchway inside a workspace container with the bundled interpreter: puts the
server's import directories on sys.path and runs the module named by the first argument."""
import os
import runpy
import sys

for i in range({PATH_SLOTS}):
    d = "{RUNTIME_ROOT}/path%d" % i
    if os.path.isdir(d) and os.listdir(d) and d not in sys.path:
        sys.path.append(d)
if os.path.isdir("{RUNTIME_ROOT}/dynload") and "{RUNTIME_ROOT}/dynload" not in sys.path:
    sys.path.append("{RUNTIME_ROOT}/dynload")
if len(sys.argv) < 2:
    sys.exit("usage: boot.py MODULE [ARGS...]")
module = sys.argv[1]
sys.argv = [module] + sys.argv[2:]
runpy.run_module(module, run_name="__main__", alter_sys=True)
'''


def parse_ldd(output: str) -> tuple[dict[str, str], str | None, list[str]]:
    """From ``ldd`` output: {soname: path} of the libraries found, the dynamic loader's path,
    and the sonames not found. Accepts the multi-file form (``file:`` header lines)."""
    found: dict[str, str] = {}
    loader: str | None = None
    missing: list[str] = []
    for raw in output.splitlines():
        line = raw.strip()
        if not line or line.endswith(":") and "=>" not in line:
            continue
        if "=>" in line:
            name, _, rest = line.partition("=>")
            name, rest = name.strip(), rest.strip()
            if rest.startswith("not found"):
                missing.append(name)
                continue
            path = rest.split(" (", 1)[0].strip()
            if path.startswith("/"):
                found.setdefault(name, path)
            continue
        path = line.split(" (", 1)[0].strip()
        if path.startswith("/") and "/ld-" in path:
            loader = loader or path
    return found, loader, sorted(set(missing))


def import_dirs(hatchway_parent: str, site_dirs: Iterable[str], stdlib: str, exists: callable = os.path.isdir) -> list[str]:  # type: ignore[valid-type]
    """The directories the agent imports from, besides the standard library (pure)."""
    out: list[str] = []
    for d in [hatchway_parent, *site_dirs]:
        d = os.path.realpath(d)
        if not exists(d) or d in out:
            continue
        if d == stdlib or d.startswith(stdlib.rstrip("/") + "/") and not d.endswith(("site-packages", "dist-packages")):
            continue
        out.append(d)
    return out


def runtime_key(parts: dict) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Interpreter:
    executable: str
    version: str  # "3.11"
    stdlib: str
    dynload: str
    imports: tuple[str, ...]


def current_interpreter() -> Interpreter:
    exe = os.path.realpath(getattr(sys, "_base_executable", None) or sys.executable)
    stdlib = os.path.realpath(sysconfig.get_paths()["stdlib"])
    dynload = os.path.realpath(sysconfig.get_config_var("DESTSHARED") or os.path.join(stdlib, "lib-dynload"))
    site_dirs = list(site.getsitepackages())
    if site.ENABLE_USER_SITE and site.getusersitepackages() in sys.path:
        site_dirs.append(site.getusersitepackages())
    parent = str(Path(hatchway.__file__).resolve().parent.parent)
    return Interpreter(exe, f"{sys.version_info[0]}.{sys.version_info[1]}", stdlib, dynload,
                       tuple(import_dirs(parent, site_dirs, stdlib)))


def _shared_objects(dirs: Iterable[str]) -> list[str]:
    out = []
    for d in dirs:
        for root, _dirs, files in os.walk(d):
            for f in files:
                if f.endswith(".so") or ".so." in f:
                    p = os.path.join(root, f)
                    if os.path.isfile(p) and not os.path.islink(p):
                        out.append(p)
    return sorted(out)


def _ldd(files: list[str]) -> tuple[dict[str, str], str | None]:
    libs: dict[str, str] = {}
    loader: str | None = None
    for i in range(0, len(files), 100):
        chunk = files[i : i + 100]
        try:
            done = subprocess.run(["ldd", *chunk], capture_output=True, text=True, timeout=120, check=False)
        except FileNotFoundError:
            raise SetupError("the docker provider needs ldd on the server (Debian package libc-bin)") from None
        found, ld, _missing = parse_ldd(done.stdout)
        for k, v in found.items():
            libs.setdefault(k, v)
        loader = loader or ld
    return libs, loader


def _symlink(target: str, link: Path) -> None:
    """Point ``link`` at ``target`` atomically (never a moment without it)."""
    if link.is_symlink() and os.readlink(link) == target:
        return
    tmp = link.with_name(link.name + ".new")
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    os.symlink(target, tmp)
    os.replace(tmp, link)


def ensure_runtime(base: Path, interp: Interpreter | None = None) -> RuntimeMounts:
    """Make ``base`` (``<data dir>/docker/agent-runtime``) current for this server's Python and
    return the host paths to mount. Cheap when nothing changed (a directory walk and stats)."""
    interp = interp or current_interpreter()
    if len(interp.imports) > PATH_SLOTS:
        raise SetupError(
            f"the server imports from {len(interp.imports)} directories ({', '.join(interp.imports)}); the docker "
            f"provider mounts at most {PATH_SLOTS}: install hatchway into one virtualenv"
        )
    data_dir = base.parent.parent.resolve()
    for d in interp.imports + (interp.stdlib,):
        if data_dir == Path(d) or Path(d) in data_dir.parents:
            raise SetupError(
                f"the server's data directory {data_dir} is inside {d}, which every workspace container mounts "
                "read-only: use a data directory outside the Python installation and the source tree"
            )
    base.mkdir(parents=True, exist_ok=True)
    os.chmod(base, 0o755)
    sos = _shared_objects([interp.dynload] + list(interp.imports))
    stats = []
    for p in [interp.executable] + sos:
        st = os.stat(p)
        stats.append((p, st.st_size, int(st.st_mtime)))
    key = runtime_key({"exe": interp.executable, "version": interp.version, "stdlib": interp.stdlib, "files": stats, "boot": BOOT_PY})
    build = base / f"build-{key}"
    if not (build / "KEY").exists():
        _build(build, key, interp, sos)
    _symlink(build.name, base / "runtime")
    for old in base.glob("build-*"):
        if old.name != build.name:
            shutil.rmtree(old, ignore_errors=True)  # running containers keep their mounted copy
    empty = base / "empty"
    empty.mkdir(exist_ok=True)
    os.chmod(empty, 0o755)
    _symlink(interp.stdlib, base / "stdlib")
    _symlink(interp.dynload if os.path.isdir(interp.dynload) else str(empty), base / "dynload")
    for i in range(PATH_SLOTS):
        _symlink(interp.imports[i] if i < len(interp.imports) else str(empty), base / f"path{i}")
    return RuntimeMounts(
        runtime=str(base / "runtime"), stdlib=str(base / "stdlib"), dynload=str(base / "dynload"),
        paths=tuple(str(base / f"path{i}") for i in range(PATH_SLOTS)),
        key=key,
    )


def _build(build: Path, key: str, interp: Interpreter, sos: list[str]) -> None:
    tmp = build.with_name(build.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "bin").mkdir(parents=True)
    (tmp / "lib").mkdir()
    libs, loader = _ldd([interp.executable] + sos)
    if loader is None:
        raise SetupError(f"cannot find the dynamic loader of {interp.executable} (is it a glibc build? ldd says nothing)")
    shutil.copy2(interp.executable, tmp / "bin" / "python")
    shutil.copy2(loader, tmp / "ld.so")
    for soname, path in sorted(libs.items()):
        if "/" in soname:
            continue
        shutil.copy2(os.path.realpath(path), tmp / "lib" / soname)
    # Python finds its prefix from the landmark lib/pythonX.Y/os.py: point it at the mounted stdlib.
    os.symlink(STDLIB_DIR, tmp / "lib" / f"python{interp.version}")
    (tmp / "boot.py").write_text(BOOT_PY)
    (tmp / "KEY").write_text(key + "\n")
    for root, _dirs, files in os.walk(tmp):
        os.chmod(root, 0o755)
        for f in files:
            p = os.path.join(root, f)
            if not os.path.islink(p):
                os.chmod(p, 0o755 if f in ("python", "ld.so") or ".so" in f else 0o644)
    shutil.rmtree(build, ignore_errors=True)
    os.replace(tmp, build)
