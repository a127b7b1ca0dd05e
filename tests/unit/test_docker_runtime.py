"""The agent runtime and what runs inside workspace containers: the pure parts."""

from __future__ import annotations

import ast
import importlib.util
import sys
from pathlib import Path

import pytest

from hatchway.providers import docker_incontainer as ic
from hatchway.providers import docker_runtime as rt

LDD_ONE = """\
\tlinux-vdso.so.1 (0x00007ffd5a1f0000)
\tlibpython3.11.so.1.0 => /root/.pyenv/versions/3.11.7/lib/libpython3.11.so.1.0 (0x00007f3b5be00000)
\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f3b5bc1e000)
\tlibm.so.6 => /lib/x86_64-linux-gnu/libm.so.6 (0x00007f3b5bb3e000)
\t/lib64/ld-linux-x86-64.so.2 (0x00007f3b5c3f0000)
"""

LDD_MANY = """\
/usr/lib/python3.11/lib-dynload/_ssl.cpython-311-x86_64-linux-gnu.so:
\tlinux-vdso.so.1 (0x00007ffc)
\tlibssl.so.3 => /lib/x86_64-linux-gnu/libssl.so.3 (0x00007f)
\tlibcrypto.so.3 => /lib/x86_64-linux-gnu/libcrypto.so.3 (0x00007f)
\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f)
\t/lib64/ld-linux-x86-64.so.2 (0x00007f)
/venv/site-packages/odd.so:
\tlibmissing.so.9 => not found
\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f)
/venv/site-packages/static.so:
\tstatically linked
"""


def test_parse_ldd_single_file() -> None:
    found, loader, missing = rt.parse_ldd(LDD_ONE)
    assert found == {
        "libpython3.11.so.1.0": "/root/.pyenv/versions/3.11.7/lib/libpython3.11.so.1.0",
        "libc.so.6": "/lib/x86_64-linux-gnu/libc.so.6",
        "libm.so.6": "/lib/x86_64-linux-gnu/libm.so.6",
    }
    assert loader == "/lib64/ld-linux-x86-64.so.2"
    assert missing == []


def test_parse_ldd_many_files() -> None:
    found, loader, missing = rt.parse_ldd(LDD_MANY)
    assert set(found) == {"libssl.so.3", "libcrypto.so.3", "libc.so.6"}
    assert loader == "/lib64/ld-linux-x86-64.so.2"
    assert missing == ["libmissing.so.9"]


def test_import_dirs_keep_order_and_skip_the_stdlib(tmp_path) -> None:  # type: ignore[no-untyped-def]
    src, venv, std = tmp_path / "src", tmp_path / "venv/site-packages", tmp_path / "py/lib/python3.11"
    for d in (src, venv, std, std / "site-packages"):
        d.mkdir(parents=True)
    dirs = rt.import_dirs(str(src), [str(venv), str(venv), str(std), str(std / "site-packages"), str(tmp_path / "gone")],
                          str(std))
    assert dirs == [str(src), str(venv), str(std / "site-packages")]


def test_runtime_key_changes_with_its_inputs() -> None:
    a = rt.runtime_key({"exe": "/usr/bin/python3.11", "files": [["/x.so", 1, 2]]})
    assert a == rt.runtime_key({"files": [["/x.so", 1, 2]], "exe": "/usr/bin/python3.11"})
    assert a != rt.runtime_key({"exe": "/usr/bin/python3.11", "files": [["/x.so", 1, 3]]})


def test_boot_script_is_valid_python_for_the_bundled_interpreter() -> None:
    ast.parse(rt.BOOT_PY)
    assert "/opt/hatchway/path%d" in rt.BOOT_PY


def test_current_interpreter_is_found() -> None:
    interp = rt.current_interpreter()
    assert interp.version == f"{sys.version_info[0]}.{sys.version_info[1]}"
    from pathlib import Path

    import hatchway

    assert str(Path(hatchway.__file__).resolve().parent.parent) == interp.imports[0]


# ---- inside the container: accounts ------------------------------------------------------------------

PASSWD = """\
root:x:0:0:root:/root:/bin/bash
daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin
sshd:x:100:65534::/run/sshd:/usr/sbin/nologin
ubuntu:x:1000:1000:Ubuntu:/home/ubuntu:/bin/bash
nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin
"""
GROUPS = "root:x:0:\ndaemon:x:1:\nubuntu:x:1000:\nnogroup:x:65534:\n"


def accounts() -> list[ic.Account]:
    return ic.parse_passwd(PASSWD)


def test_new_user_gets_the_first_free_ids() -> None:
    p = ic.plan_user("alice", "/home/alice", accounts(), ic.parse_group_ids(GROUPS), None)
    assert p == ic.UserPlan("alice", 1001, 1001, True, True, False)


def test_new_user_reuses_the_uid_owning_its_persistent_home() -> None:
    p = ic.plan_user("alice", "/home/alice", accounts(), ic.parse_group_ids(GROUPS), 1005)
    assert (p.uid, p.gid) == (1005, 1005)
    # ...unless that uid is someone else's, or root's (a fresh volume belongs to root)
    assert ic.plan_user("alice", "/home/alice", accounts(), {}, 1000).uid == 1001
    assert ic.plan_user("alice", "/home/alice", accounts(), {}, 0).uid == 1001


def test_existing_regular_account_is_reused() -> None:
    p = ic.plan_user("ubuntu", "/home/ubuntu", accounts(), ic.parse_group_ids(GROUPS), None)
    assert p == ic.UserPlan("ubuntu", 1000, 1000, False, False, False)
    p = ic.plan_user("ubuntu", "/home/elsewhere", accounts(), {}, None)
    assert p.set_home and not p.create_user


def test_system_account_names_are_not_taken_over() -> None:
    for name in ("root", "daemon", "sshd", "nobody"):
        p = ic.plan_user(name, f"/home/{name}", accounts(), ic.parse_group_ids(GROUPS), None)
        assert p.name == f"hw-{name}" and p.uid >= 1000 and p.create_user


def test_existing_group_of_the_same_name_is_used() -> None:
    p = ic.plan_user("alice", "/home/alice", accounts(), {"alice": 1234, "ubuntu": 1000}, None)
    assert (p.uid, p.gid, p.create_group) == (1001, 1234, False)


def test_account_lines() -> None:
    assert ic.passwd_line("alice", 1001, 1001, "/home/alice", "/bin/bash") == (
        "alice:x:1001:1001:Hatchway workspace user:/home/alice:/bin/bash\n"
    )
    assert ic.group_line("alice", 1001) == "alice:x:1001:\n"
    line = ic.shadow_line("alice")
    assert line.split(":")[1] == "*"  # no password, not locked ("!" would lock key logins out)
    assert ic.appended("a:b", "c\n") == "a:b\nc\n"
    assert ic.appended("", "c\n") == "c\n"


def test_with_home_changes_one_field_and_nothing_else() -> None:
    out = ic.with_home(PASSWD, "ubuntu", "/home/u2")
    assert "ubuntu:x:1000:1000:Ubuntu:/home/u2:/bin/bash\n" in out
    assert out.replace("/home/u2", "/home/ubuntu") == PASSWD


def test_parse_passwd_skips_junk() -> None:
    assert ic.parse_passwd("# comment\n+nis\nbad:line\nx:x:notanumber:1::/:/bin/sh\n") == []


MOUNTINFO = """\
79 78 0:46 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime - tmpfs tmpfs rw,mode=755
80 79 0:29 / /sys/fs/cgroup/cpu ro,nosuid,nodev,noexec,relatime - cgroup cgroup rw,cpu
88 79 0:37 / /sys/fs/cgroup/systemd ro,nosuid,nodev,noexec,relatime - cgroup systemd rw,name=systemd
90 78 0:50 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime - cgroup2 cgroup2 rw
91 78 0:51 / /proc rw,nosuid,nodev,noexec,relatime - proc proc rw
"""


def test_cgroup_mounts_from_mountinfo() -> None:
    assert ic.cgroup_mounts(MOUNTINFO) == [
        ("/sys/fs/cgroup/cpu", True), ("/sys/fs/cgroup/systemd", True), ("/sys/fs/cgroup/unified", False),
    ]
    assert ic.read_only_cgroups(MOUNTINFO) == ["/sys/fs/cgroup/cpu", "/sys/fs/cgroup/systemd"]


def test_incontainer_module_uses_only_the_standard_library() -> None:
    """Of the hatchway package (mounted in the container) it may use modules, and their packages,
    that are standard library only themselves: the re-own walk."""
    seen: set[str] = set()
    todo = [ic.__name__]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        spec = importlib.util.find_spec(name)
        assert spec is not None and spec.origin is not None, name
        for node in ast.walk(ast.parse(Path(spec.origin).read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                modules = [node.module]
            elif isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            else:
                continue
            for module in modules:
                parts = module.split(".")
                if parts[0] == "hatchway":
                    todo += [".".join(parts[:i]) for i in range(1, len(parts) + 1)]
                else:
                    assert module == "__future__" or parts[0] in sys.stdlib_module_names, (name, module)
        todo += [name.rpartition(".")[0]] if "." in name else []
    assert seen == {ic.__name__, "hatchway.providers.reown", "hatchway.providers", "hatchway"}


def test_unknown_command_is_one_line_and_status_3(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        ic.main(["fly"])
    assert e.value.code == 3
    assert capsys.readouterr().err == "hatchway: unknown command 'fly'\n"


def test_hostname_is_made_resolvable_once() -> None:
    hosts = "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"
    out = ic.hosts_with_hostname(hosts, "cvm")
    assert out == hosts + "127.0.1.1\tcvm\n"
    assert ic.hosts_with_hostname(out, "cvm") is None
    assert ic.hosts_with_hostname("172.17.0.2\tother cvm # docker\n", "cvm") is None
    assert ic.hosts_with_hostname("# cvm\n", "cvm") == "# cvm\n127.0.1.1\tcvm\n"
