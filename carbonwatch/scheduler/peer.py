"""Which local user is on the other end of a request.

Submitting a deferred job makes the daemon run a command, as the daemon's own user. With a
token, the token says who may. Without one (the loopback default), every local user could reach
the API, so submit and cancel are allowed only to a peer running as the daemon's user (or root):
on a Unix socket the kernel says who (SO_PEERCRED); on loopback TCP, the connecting socket is
this host's own and ``/proc/net/tcp{,6}`` lists its owner."""

from __future__ import annotations

import ipaddress
import socket
import struct
from pathlib import Path
from typing import Any

PROC_NET = Path("/proc/net")


def _hex_address(host: str) -> str:
    """An address as /proc/net/tcp prints it: each 32-bit word in host byte order, in hex."""
    raw = ipaddress.ip_address(host).packed
    return "".join(f"{struct.unpack('=I', raw[i : i + 4])[0]:08X}" for i in range(0, len(raw), 4))


def _tcp_owner(peer: tuple[Any, ...], local: tuple[Any, ...], proc_net: Path) -> int | None:
    """The uid owning the socket whose local end is ``peer`` and remote end ``local``."""
    host = str(peer[0]).split("%")[0]
    version = ipaddress.ip_address(host).version
    files = ("tcp",) if version == 4 else ("tcp6",)
    want_local = f"{_hex_address(host)}:{int(peer[1]):04X}"
    want_remote = f"{_hex_address(str(local[0]).split('%')[0])}:{int(local[1]):04X}"
    for name in files:
        try:
            lines = (proc_net / name).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            cells = line.split()
            if len(cells) > 7 and cells[1] == want_local and cells[2] == want_remote:
                return int(cells[7])
    return None


def peer_uid(transport: Any, proc_net: Path = PROC_NET) -> int | None:
    """The uid of the peer of an asyncio transport, or None when it cannot be known (a remote
    peer, or no /proc)."""
    if transport is None:
        return None
    sock = transport.get_extra_info("socket")
    if sock is None:
        return None
    if sock.family == socket.AF_UNIX:
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        return struct.unpack("3i", creds)[1]
    peer, local = transport.get_extra_info("peername"), transport.get_extra_info("sockname")
    if not peer or not local:
        return None
    try:
        if not ipaddress.ip_address(str(peer[0]).split("%")[0]).is_loopback:
            return None  # the other end is another machine: no local user to look up
        return _tcp_owner(peer, local, proc_net)
    except ValueError:
        return None
