"""Diagnostics about the image's own OpenSSH (SPEC 3.5): parsing like sshd, exact sentences."""

from __future__ import annotations

import os
from fnmatch import fnmatch
from pathlib import Path

import pytest

from hatchway.agent import diagnostics as d
from hatchway.agent.diagnostics import ConfigError, Facts, diagnose, effective_settings


def no_includes(pattern: str) -> list[tuple[str, str]]:
    raise AssertionError(f"unexpected Include {pattern}")


def loader(files: dict[str, str]):
    calls: list[str] = []

    def load(pattern: str) -> list[tuple[str, str]]:
        calls.append(pattern)
        return [(name, text) for name, text in sorted(files.items()) if fnmatch(name, pattern)]

    load.calls = calls  # type: ignore[attr-defined]
    return load


GOOD = Facts(etc_environment_exists=False, xauth_available=True)

PUE = (
    "sshd on port 22 has PermitUserEnvironment no: ~/.ssh/environment (image variables and "
    "Hatchway defaults) is not applied; set PermitUserEnvironment yes"
)
X11 = (
    'sshd on port 22 has X11Forwarding yes but xauth is not installed: clients see '
    '"X11 forwarding request failed on channel 0"; install xauth'
)
ETC_ENV = (
    "/etc/environment exists: sshd on port 22 (through PAM) applies it at login and it overrides "
    "the image's ENV variables; remove it from the image"
)


# ---- parsing --------------------------------------------------------------------------------


def test_keywords_are_case_insensitive_and_the_first_value_wins() -> None:
    text = "# comment\n\npermituserenvironment Yes\nPermitUserEnvironment no\nX11FORWARDING=yes\n"
    s = effective_settings(text, no_includes)
    assert s["permituserenvironment"] == "Yes"
    assert s["x11forwarding"] == "yes"


@pytest.mark.parametrize(
    "line",
    ["PermitUserEnvironment yes", "PermitUserEnvironment=yes", "PermitUserEnvironment = yes",
     "  PermitUserEnvironment\tyes", 'PermitUserEnvironment "yes"'],
)
def test_keyword_value_separators_like_sshd(line: str) -> None:
    assert effective_settings(line + "\n", no_includes)["permituserenvironment"] == "yes"


def test_match_blocks_are_ignored_until_match_all() -> None:
    text = (
        "Match User alice\n"
        "  PermitUserEnvironment yes\n"
        "  X11Forwarding yes\n"
        "Match all\n"
        "X11Forwarding no\n"
    )
    s = effective_settings(text, no_includes)
    assert "permituserenvironment" not in s
    assert s["x11forwarding"] == "no"


def test_include_is_read_in_place_so_an_earlier_include_wins() -> None:
    # Debian's layout: Include first, so sshd_config.d/*.conf overrides the main file.
    files = {
        "/etc/ssh/sshd_config.d/10-a.conf": "PermitUserEnvironment yes\n",
        "/etc/ssh/sshd_config.d/20-b.conf": "PermitUserEnvironment no\nX11Forwarding yes\n",
    }
    load = loader(files)
    text = "Include /etc/ssh/sshd_config.d/*.conf\nPermitUserEnvironment no\nX11Forwarding no\n"
    s = effective_settings(text, load)
    assert s["permituserenvironment"] == "yes"
    assert s["x11forwarding"] == "yes"
    assert load.calls == ["/etc/ssh/sshd_config.d/*.conf"]  # type: ignore[attr-defined]


def test_a_match_inside_an_included_file_ends_with_that_file() -> None:
    files = {"/inc/a.conf": "Match User bob\nPermitUserEnvironment yes\n"}
    s = effective_settings("Include /inc/*\nPermitUserEnvironment no\n", loader(files))
    assert s["permituserenvironment"] == "no"


def test_include_loop_is_an_error_not_a_hang() -> None:
    with pytest.raises(ConfigError, match="nested too deeply"):
        effective_settings("Include /loop\n", lambda p: [("/loop", "Include /loop\n")])


def test_unreadable_include_is_a_config_error() -> None:
    def load(pattern: str) -> list[tuple[str, str]]:
        raise PermissionError(13, "Permission denied")

    with pytest.raises(ConfigError, match="Permission denied"):
        effective_settings("Include x.conf\n", load)


# ---- diagnosing -----------------------------------------------------------------------------


def test_defaults_mean_permit_user_environment_no() -> None:
    assert diagnose({}, GOOD) == [PUE]


def test_a_good_config_has_no_diagnostics() -> None:
    assert diagnose({"permituserenvironment": "yes", "x11forwarding": "yes"}, GOOD) == []


def test_pattern_list_is_not_yes() -> None:
    out = diagnose({"permituserenvironment": "LANG,LC_*"}, GOOD)
    assert out == [PUE.replace("PermitUserEnvironment no:", "PermitUserEnvironment LANG,LC_*:")]


def test_etc_environment_and_x11_without_xauth() -> None:
    facts = Facts(etc_environment_exists=True, xauth_available=False)
    out = diagnose({"permituserenvironment": "YES", "x11forwarding": "yes", "usepam": "yes"}, facts)
    assert out == [ETC_ENV, X11]


def test_etc_environment_is_inert_without_pam() -> None:
    facts = Facts(etc_environment_exists=True, xauth_available=True)
    assert diagnose({"permituserenvironment": "yes"}, facts) == []
    assert diagnose({"permituserenvironment": "yes", "usepam": "no"}, facts) == []


def test_x11_without_xauth_is_fine_when_x11_forwarding_is_off() -> None:
    facts = Facts(etc_environment_exists=False, xauth_available=False)
    assert diagnose({"permituserenvironment": "yes"}, facts) == []


def test_unreadable_config_is_reported_and_facts_still_checked() -> None:
    facts = Facts(etc_environment_exists=True, xauth_available=False)
    out = diagnose(None, facts, config_error="/etc/ssh/sshd_config: Permission denied")
    assert out == [
        ("could not read the configuration of sshd on port 22 (/etc/ssh/sshd_config: Permission denied); "
        "its PermitUserEnvironment and X11Forwarding settings were not checked"),
        ETC_ENV,
    ]


# ---- the I/O edge, on real files ------------------------------------------------------------


def test_collect_reads_relative_includes_in_sorted_order(tmp_path: Path) -> None:
    (tmp_path / "sshd_config.d").mkdir()
    (tmp_path / "sshd_config.d" / "b.conf").write_text("X11Forwarding yes\n")
    (tmp_path / "sshd_config.d" / "a.conf").write_text("PermitUserEnvironment yes\n")
    (tmp_path / "sshd_config").write_text(
        "Include sshd_config.d/*.conf\nInclude missing/*.conf\nPermitUserEnvironment no\nUsePAM yes\n"
        f"XAuthLocation {tmp_path / 'no-xauth'}\n"
    )
    out = d.collect(str(tmp_path / "sshd_config"), str(tmp_path / "environment"))
    assert out == [X11]
    (tmp_path / "environment").write_text("# Debian ships it like this: nothing set\n\n")
    assert d.collect(str(tmp_path / "sshd_config"), str(tmp_path / "environment")) == [X11]
    (tmp_path / "environment").write_text("PATH=/usr/bin\n")
    assert d.collect(str(tmp_path / "sshd_config"), str(tmp_path / "environment")) == [ETC_ENV, X11]


def test_collect_never_raises_on_an_unreadable_config(tmp_path: Path) -> None:
    config = tmp_path / "sshd_config"
    config.mkdir()  # reading a directory fails for root too, unlike chmod 000
    out = d.collect(str(config), str(tmp_path / "environment"))
    assert len(out) == 1
    assert out[0].startswith(f"could not read the configuration of sshd on port 22 ({config}: Is a directory)")


def test_collect_finds_an_executable_xauth_location(tmp_path: Path) -> None:
    xauth = tmp_path / "xauth"
    xauth.write_text("#!/bin/sh\n")
    os.chmod(xauth, 0o755)
    (tmp_path / "sshd_config").write_text(f"PermitUserEnvironment yes\nX11Forwarding yes\nXAuthLocation {xauth}\n")
    assert d.collect(str(tmp_path / "sshd_config"), str(tmp_path / "environment")) == []


def test_an_xauth_only_on_path_is_not_one_sshd_finds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """sshd runs xauth from its built-in path (or XAuthLocation), never from PATH."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "xauth").write_text("#!/bin/sh\n")
    os.chmod(bin_dir / "xauth", 0o755)
    monkeypatch.setenv("PATH", str(bin_dir))
    monkeypatch.setattr(d, "DEFAULT_XAUTH", str(tmp_path / "usr-bin-xauth"))
    (tmp_path / "sshd_config").write_text("PermitUserEnvironment yes\nX11Forwarding yes\n")
    assert d.collect(str(tmp_path / "sshd_config"), str(tmp_path / "environment")) == [X11]
    (tmp_path / "usr-bin-xauth").write_text("#!/bin/sh\n")
    os.chmod(tmp_path / "usr-bin-xauth", 0o755)
    assert d.collect(str(tmp_path / "sshd_config"), str(tmp_path / "environment")) == []
