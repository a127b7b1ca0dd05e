"""The Debian packages scripts/setup installs, in its order: what the setup tests expect it to
name and pass to apt-get (one list, so a package added to the script is added here once)."""

RUNTIME = [
    "openssh-client", "openssh-server", "rsync", "git", "iproute2", "procps", "util-linux", "passwd", "tini",
    "xauth", "python3-venv",
]
TESTS_ONLY = [
    "postgresql", "postgresql-client", "iptables", "nginx-light", "chromium", "xvfb", "x11-utils", "curl", "docker.io",
    "debootstrap",
]
