"""Apply the terminal modes an SSH client sends in its ``pty-req`` (RFC 4254 §8) to termios.

The client encodes its own terminal's settings (erase character, ICRNL, ...) so that the remote
PTY behaves like the local one; without this, Backspace sends ^? to a PTY expecting ^H on some
clients. Pure function over termios attribute lists, so it is testable without a PTY.
"""

from __future__ import annotations

import termios
from collections.abc import Mapping

# opcode -> termios control-character index
_CC: dict[int, str] = {
    1: "VINTR",
    2: "VQUIT",
    3: "VERASE",
    4: "VKILL",
    5: "VEOF",
    6: "VEOL",
    7: "VEOL2",
    8: "VSTART",
    9: "VSTOP",
    10: "VSUSP",
    11: "VDSUSP",
    12: "VREPRINT",
    13: "VWERASE",
    14: "VLNEXT",
    15: "VFLUSH",
    16: "VSWTCH",
    17: "VSTATUS",
    18: "VDISCARD",
}
# opcode -> (index into the tcgetattr list, flag name)
_IFLAG, _OFLAG, _CFLAG, _LFLAG = 0, 1, 2, 3
_FLAGS: dict[int, tuple[int, str]] = {
    30: (_IFLAG, "IGNPAR"),
    31: (_IFLAG, "PARMRK"),
    32: (_IFLAG, "INPCK"),
    33: (_IFLAG, "ISTRIP"),
    34: (_IFLAG, "INLCR"),
    35: (_IFLAG, "IGNCR"),
    36: (_IFLAG, "ICRNL"),
    37: (_IFLAG, "IUCLC"),
    38: (_IFLAG, "IXON"),
    39: (_IFLAG, "IXANY"),
    40: (_IFLAG, "IXOFF"),
    41: (_IFLAG, "IMAXBEL"),
    42: (_IFLAG, "IUTF8"),
    50: (_LFLAG, "ISIG"),
    51: (_LFLAG, "ICANON"),
    52: (_LFLAG, "XCASE"),
    53: (_LFLAG, "ECHO"),
    54: (_LFLAG, "ECHOE"),
    55: (_LFLAG, "ECHOK"),
    56: (_LFLAG, "ECHONL"),
    57: (_LFLAG, "NOFLSH"),
    58: (_LFLAG, "TOSTOP"),
    59: (_LFLAG, "IEXTEN"),
    60: (_LFLAG, "ECHOCTL"),
    61: (_LFLAG, "ECHOKE"),
    62: (_LFLAG, "PENDIN"),
    70: (_OFLAG, "OPOST"),
    71: (_OFLAG, "OLCUC"),
    72: (_OFLAG, "ONLCR"),
    73: (_OFLAG, "OCRNL"),
    74: (_OFLAG, "ONOCR"),
    75: (_OFLAG, "ONLRET"),
    90: (_CFLAG, "CS7"),
    91: (_CFLAG, "CS8"),
    92: (_CFLAG, "PARENB"),
    93: (_CFLAG, "PARODD"),
}
TTY_OP_ISPEED = 128
TTY_OP_OSPEED = 129
_VDISABLE = 255  # RFC 4254: 255 means "not used"; Linux's _POSIX_VDISABLE is 0


def _baud_constant(speed: int) -> int | None:
    """termios encodes speeds as B<n> constants; unknown speeds are left alone."""
    return getattr(termios, f"B{speed}", None)


def apply_tty_modes(attrs: list, modes: Mapping[int, int]) -> list:
    """Return a copy of ``attrs`` (a ``termios.tcgetattr`` list) with ``modes`` applied.

    Opcodes this platform has no flag for are ignored, as OpenSSH does.
    """
    iflag, oflag, cflag, lflag, ispeed, ospeed, cc = attrs
    new = [iflag, oflag, cflag, lflag, ispeed, ospeed, list(cc)]
    for op, value in modes.items():
        if op in _CC:
            idx = getattr(termios, _CC[op], None)
            if idx is None or idx >= len(new[6]):
                continue
            ch = 0 if value == _VDISABLE else value & 0xFF
            new[6][idx] = ch if isinstance(new[6][idx], int) else bytes([ch])
        elif op in _FLAGS:
            where, name = _FLAGS[op]
            bit = getattr(termios, name, None)
            if bit is None:
                continue
            if where == _CFLAG and name in ("CS7", "CS8"):
                # CS7/CS8 are values of the CSIZE field, not independent bits.
                if value:
                    new[_CFLAG] = (new[_CFLAG] & ~termios.CSIZE) | bit
                continue
            new[where] = (new[where] | bit) if value else (new[where] & ~bit)
        elif op in (TTY_OP_ISPEED, TTY_OP_OSPEED):
            baud = _baud_constant(value)
            if baud is not None:
                new[4 if op == TTY_OP_ISPEED else 5] = baud
    return new
