"""The byte path's own parts, shared by the proxy, the server's relay and the agent.

* ``frames`` - RFC 6455 frames of a relayed byte stream: an incremental reader that hands out
  payload as it arrives, and frame headers (pure; the proxy imports it, so stdlib only);
* ``splice`` - two ends of a stream copied in the event loop's callbacks: a WebSocket taken
  over from its owner (uvicorn's or websockets' protocol object) or a plain socket.
"""
