"""The web UI: server-rendered pages, a little JavaScript, no build step."""
