"""Argon2 runs off the event loop, a few at a time, and a flood is refused, not queued."""

from __future__ import annotations

import asyncio
import threading

import pytest

from hatchway.server import crypto, passwords
from hatchway.server.errors import APIError


def test_checks_run_in_a_worker_thread_and_answer_as_the_plain_functions_do() -> None:
    stored = crypto.hash_password("correct-horse-1")

    async def main() -> tuple[bool, bool, str]:
        loop_thread = threading.current_thread().name
        seen: list[str] = []
        original = crypto.verify_password

        def recording(h: str, p: str) -> bool:
            seen.append(threading.current_thread().name)
            return original(h, p)

        crypto.verify_password = recording  # type: ignore[assignment]
        try:
            right = await passwords.verify_password(stored, "correct-horse-1")
            wrong = await passwords.verify_password(stored, "wrong")
        finally:
            crypto.verify_password = original  # type: ignore[assignment]
        assert seen and all(name.startswith("password-hash") and name != loop_thread for name in seen), seen
        return right, wrong, await passwords.hash_password("another-one-2")

    right, wrong, new_hash = asyncio.run(main())
    assert (right, wrong) == (True, False)
    assert crypto.verify_password(new_hash, "another-one-2")


def test_beyond_what_may_wait_the_answer_is_503_with_retry_after(monkeypatch: pytest.MonkeyPatch) -> None:
    release = threading.Event()

    def held(_h: str, _p: str) -> bool:
        release.wait(10)
        return False

    monkeypatch.setattr(crypto, "verify_password", held)
    capacity = passwords.WORKERS + passwords.MAX_WAITING

    async def main() -> None:
        admitted = [asyncio.ensure_future(passwords.verify_password("h", "p")) for _ in range(capacity)]
        await asyncio.sleep(0)  # each has taken its place
        with pytest.raises(APIError) as refused:
            await passwords.verify_password("h", "p")
        assert refused.value.status == 503
        assert refused.value.error == "too many sign-ins at once"
        assert refused.value.detail == f"the server is checking {capacity} passwords; try again in 2 seconds"
        assert (refused.value.headers or {}) == {"Retry-After": "2"}
        release.set()
        assert await asyncio.gather(*admitted) == [False] * capacity
        assert await passwords.verify_password("h", "p") is False  # room again

    asyncio.run(main())
