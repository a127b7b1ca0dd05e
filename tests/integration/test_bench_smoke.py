"""``bench/run --quick`` end to end, so the benchmark cannot rot: every row of the table and of
the JSON must carry a numeric result. No timing is asserted (the figures depend on the machine)."""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path

import pytest

from bench.world import why_cannot_run
from tests.helpers.nginx import why_cannot_run as why_no_nginx

ROOT = Path(__file__).resolve().parents[2]
REASON = why_cannot_run()

pytestmark = pytest.mark.skipif(REASON is not None, reason=str(REASON))

#: Rows that may say "not supported" instead of a number (SFTP on the built-in server, until it has it).
def expected_keys() -> set[str]:
    paths = ("hatchway-openssh", "hatchway-builtin", "direct")
    keys = set()
    for cipher in ("aes128-gcm", "default cipher"):
        for direction in ("download", "upload"):
            keys |= {f"throughput.{direction}.{cipher}.{p}" for p in paths}
        for proc in ("server", "agent"):
            keys |= {f"resources.cpu.{proc}.{cipher}.{p}" for p in paths[:2]}
    keys |= {f"sftp.{d}.{p}" for d in ("get", "put") for p in paths}
    keys |= {f"setup.ssh_true.{p}" for p in paths}
    keys |= {f"setup.proxy_ready.{p}" for p in paths[:2]}
    if why_no_nginx() is None:  # the production path: through nginx over TLS
        keys |= {"setup.ssh_true.hatchway-openssh-tls", "setup.proxy_ready.hatchway-openssh-tls"}
        keys |= {f"throughput.{d}.{c}.hatchway-openssh-tls" for d in ("download", "upload")
                 for c in ("aes128-gcm", "default cipher")}
    keys |= {"setup.import.proxy", "setup.import.proxy_all"}
    for mode in ("burst", "ramped"):
        keys |= {f"concurrency.10.{mode}.success", f"concurrency.10.{mode}.setup"}
    keys |= {"concurrency.10.rss.server", "concurrency.10.rss.agent"}
    return keys


def test_quick_benchmark_produces_every_row(tmp_path: Path) -> None:
    results = tmp_path / "results"
    p = subprocess.run([str(ROOT / "bench" / "run"), "--quick", "--results-dir", str(results)],
                       capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert p.returncode == 0, f"bench/run --quick failed ({p.returncode}):\n{p.stdout[-6000:]}\n{p.stderr[-6000:]}"

    data = json.loads((results / "latest.json").read_text())
    rows = {r["key"]: r for r in data["rows"]}
    assert set(rows) == expected_keys()
    for key, row in rows.items():
        assert row["status"] == "ok", (key, row["status"])
        assert isinstance(row["median"], (int, float)) and math.isfinite(row["median"]), (key, row)
    # Ratios exist wherever a direct baseline does.
    for key in ("throughput.download.aes128-gcm.hatchway-openssh", "setup.ssh_true.hatchway-builtin",
                "sftp.get.hatchway-openssh", "setup.ssh_true.hatchway-openssh-tls",
                "throughput.upload.aes128-gcm.hatchway-openssh-tls"):
        assert key not in expected_keys() or isinstance(rows[key]["ratio"], float), key
    for field in ("CPU", "cores", "kernel", "Python", "OpenSSH", "asyncssh"):
        assert data["machine"].get(field) not in (None, "", "unknown"), field

    # The printed table and the Markdown file show every row.
    markdown = (results / "latest.md").read_text()
    for row in data["rows"]:
        assert row["test"] in p.stdout.replace("\n", " ") or row["test"][:30] in p.stdout, row["test"]
        assert f"| {row['test'].replace('|', chr(92) + '|')} | {row['path']} |" in markdown, row["key"]
    assert "Hatchway vs direct OpenSSH" in p.stdout and "vs direct" in p.stdout
