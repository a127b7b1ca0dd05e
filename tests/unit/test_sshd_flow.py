"""hatchway.sshd.flow: a producer holds while its channel's window or its connection's transport
says so, and resumes only when neither does."""

from __future__ import annotations

from hatchway.sshd.flow import CONNECTION, WINDOW, Hold, OutputGate


class Producer:
    def __init__(self) -> None:
        self.calls: list[str] = []
        self.hold = Hold(lambda: self.calls.append("pause"), lambda: self.calls.append("resume"))


def test_a_hold_pauses_on_the_first_reason_and_resumes_when_the_last_is_gone() -> None:
    p = Producer()
    p.hold.set(WINDOW, True)
    p.hold.set(CONNECTION, True)
    p.hold.set(WINDOW, False)  # the connection still holds
    assert (p.calls, p.hold.held) == (["pause"], True)
    p.hold.set(CONNECTION, False)
    assert (p.calls, p.hold.held) == (["pause", "resume"], False)


def test_repeated_signals_are_not_repeated_calls() -> None:
    p = Producer()
    p.hold.set(WINDOW, False)  # nothing held: nothing to resume
    p.hold.set(WINDOW, True)
    p.hold.set(WINDOW, True)
    p.hold.set(WINDOW, False)
    p.hold.set(WINDOW, False)
    assert p.calls == ["pause", "resume"]


def test_the_gate_holds_every_producer_on_the_connection_and_new_ones_while_congested() -> None:
    gate = OutputGate()
    a, b = Producer(), Producer()
    gate.join(a.hold)
    gate.join(b.hold)
    b.hold.set(WINDOW, True)  # b's own window is full already
    gate.pause()
    gate.pause()
    late = Producer()
    gate.join(late.hold)  # joins while congested: held at once
    gate.resume()
    assert a.calls == ["pause", "resume"]
    assert (b.calls, b.hold.held) == (["pause"], True)  # still waiting for its window
    assert late.calls == ["pause", "resume"]


def test_a_producer_that_left_is_not_called() -> None:
    gate = OutputGate()
    p = Producer()
    gate.join(p.hold)
    gate.leave(p.hold)
    gate.pause()
    gate.resume()
    assert p.calls == []


def test_attach_takes_the_transport_calls_made_on_the_connection() -> None:
    class Connection:  # as asyncssh's: flow-control methods that do nothing
        def pause_writing(self) -> None:
            pass

        def resume_writing(self) -> None:
            pass

    conn, gate, p = Connection(), OutputGate(), Producer()
    gate.join(p.hold)
    gate.attach(conn)
    conn.pause_writing()  # what a transport calls on its protocol
    assert gate.congested and p.calls == ["pause"]
    conn.resume_writing()
    assert not gate.congested and p.calls == ["pause", "resume"]
