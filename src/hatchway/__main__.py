"""``python -m hatchway`` is the same as the ``hatchway`` command."""

from hatchway.cli.main import main

main()
