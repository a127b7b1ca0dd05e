"""The workspace agent (``hatchway agent``), run inside a workspace as the workspace user.

Pure logic and I/O are kept apart so the former can be tested exhaustively:

* ``authorized_keys``, ``environment`` - pure renderers of the managed blocks in ``~/.ssh``;
* ``inject`` - writes them (atomically, 0600 in a 0700 ``~/.ssh``), reporting failures;
* ``port22`` - banner parsing (pure), the per-connection probe and the port-22 monitor;
* ``diagnostics`` - what in the image's sshd_config breaks the documented experience;
* ``protocol``, ``backoff`` - control-channel messages and the reconnect schedule (pure);
* ``splice`` - bounded two-way copy between a data WebSocket and a socket;
* ``runtime`` - the agent itself: manifest, control channel, dial-back streams.
"""
