"""``hatchway agent``: run the workspace agent (inside a workspace, as the workspace user)."""

from __future__ import annotations

from pathlib import Path

import click

from hatchway.logs import setup_logging

#: Exit status when the agent cannot work and retrying will not help (bad token, bad URL).
EXIT_FATAL = 2


def _default_state_dir() -> Path:
    return Path.home() / ".local" / "share" / "hatchway-agent"


@click.command()
@click.option("--url", envvar="HATCHWAY_AGENT_URL", help="The Hatchway server's URL [env HATCHWAY_AGENT_URL].")
@click.option(
    "--token",
    envvar="HATCHWAY_AGENT_TOKEN",
    help="The workspace's agent token. Prefer the environment variable HATCHWAY_AGENT_TOKEN: "
    "command lines are visible to every user of the machine.",
)
@click.option(
    "--state-dir",
    type=click.Path(path_type=Path, file_okay=False),
    help="Where the built-in SSH server keeps its host key [default: ~/.local/share/hatchway-agent].",
)
@click.option(
    "--ssh-port",
    type=click.IntRange(0, 65535),
    default=22,
    show_default=True,
    help="The workspace's own SSH port, used when an SSH server answers there; 0 always uses the built-in server.",
)
@click.option(
    "--sshd-config",
    envvar="HATCHWAY_SSHD_CONFIG",
    default="/etc/ssh/sshd_config",
    show_default=True,
    help="The config of the sshd on that port (one started with -f): checked for settings that break "
    "the environment or X11, and read for its host keys before it answers; '' when no sshd will "
    "ever serve this workspace [env HATCHWAY_SSHD_CONFIG].",
)
@click.option("-v", "--verbose", is_flag=True, help="Log the whole story of every connection.")
def agent(url: str | None, token: str | None, state_dir: Path | None, ssh_port: int, sshd_config: str,
          verbose: bool) -> None:
    """Run the Hatchway workspace agent.

    Writes the owner's key into ~/.ssh/authorized_keys and the workspace variables into
    ~/.ssh/environment, keeps a connection to the server, and serves SSH connections through
    the workspace's own sshd on port 22 when there is one, else through a built-in server.
    """
    import asyncio
    import logging

    from hatchway.agent.protocol import URLError, normalize_url
    from hatchway.agent.runtime import AgentConfig, FatalError, run_until_signal
    from hatchway.eventloop import loop_factory
    from hatchway.fdlimit import ensure_open_files
    from hatchway.malloc import keep_large_buffers

    setup_logging(verbose)
    if not url:
        raise click.UsageError("the server URL is required: --url or HATCHWAY_AGENT_URL")
    if not token:
        raise click.UsageError("the agent token is required: set HATCHWAY_AGENT_TOKEN (or --token)")
    try:
        base = normalize_url(url)
    except URLError as exc:
        raise click.UsageError(str(exc)) from None
    config = AgentConfig(
        url=base,
        token=token.strip(),
        state_dir=(state_dir or _default_state_dir()).expanduser().absolute(),
        ssh_port=ssh_port,
        home=Path.home(),
        sshd_config=sshd_config,
    )
    # Each relayed SSH connection costs two or more descriptors here too (see hatchway.fdlimit).
    ensure_open_files(logging.getLogger("hatchway.agent"))
    keep_large_buffers()  # see hatchway.malloc: relayed frames stay in the heap
    try:
        with asyncio.Runner(loop_factory=loop_factory()) as runner:
            runner.run(run_until_signal(config))
    except FatalError as exc:
        logging.getLogger("hatchway.agent").error("%s", exc)
        raise SystemExit(EXIT_FATAL) from None
    raise SystemExit(0)
