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


def _address(host: Any) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """An address without its zone, a v4-mapped v6 one (a v4 client of a dual-stack listener,
    ``::ffff:127.0.0.1``) as the v4 address it is: the client's own socket is AF_INET, listed in
    /proc/net/tcp, and Python before 3.13 calls the mapped form not loopback."""
    address = ipaddress.ip_address(str(host).split("%")[0])
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        return address.ipv4_mapped
    return address


def loopback_owner(
    peer: tuple[Any, ...], local: tuple[Any, ...], proc_net: Path = PROC_NET
) -> int | None:
    """The uid of a TCP peer on this host's loopback; None for another machine's, or when it
    cannot be known."""
    try:
        if not _address(peer[0]).is_loopback:
            return None  # the other end is another machine: no local user to look up
        return tcp_owner(peer, local, proc_net)
    except ValueError:
        return None


NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
NLM_F_REQUEST = 1
NLMSG_ERROR = 2
_NOCOOKIE = 0xFFFFFFFF


def _diag_owner(peer: tuple[Any, ...], local: tuple[Any, ...]) -> int | None:
    """The same answer from the kernel's sock_diag netlink interface: one exact look-up of the
    socket by its four-tuple (microseconds), where /proc/net/tcp prints every socket on the host
    (~10 µs a socket: tens of milliseconds on a busy node). None when it cannot answer."""
    src, dst = _address(peer[0]), _address(local[0])
    if src.version != dst.version:
        return None
    family = socket.AF_INET if src.version == 4 else socket.AF_INET6
    sockid = struct.pack(
        "!HH16s16s", int(peer[1]), int(local[1]), src.packed.ljust(16, b"\0"),
        dst.packed.ljust(16, b"\0"),
    ) + struct.pack("=III", 0, _NOCOOKIE, _NOCOOKIE)
    req = struct.pack("=BBBxI", family, socket.IPPROTO_TCP, 0, 0xFFFFFFFF) + sockid
    msg = struct.pack("=IHHII", 16 + len(req), SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST, 1, 0) + req
    try:
        with socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_SOCK_DIAG) as nl:
            nl.settimeout(1.0)
            nl.sendto(msg, (0, 0))
            data = nl.recv(8192)
    except OSError:
        return None
    if len(data) < 16:
        return None
    _length, kind = struct.unpack_from("=IH", data)
    if kind == NLMSG_ERROR or kind != SOCK_DIAG_BY_FAMILY or len(data) < 16 + 72:
        return None
    # inet_diag_msg: family, state, timer, retrans (4 bytes), sockid (48), expires, rqueue,
    # wqueue (12), then uid
    return int(struct.unpack_from("=I", data, 16 + 4 + 48 + 12)[0])


def quick_loopback_owner(peer: tuple[Any, ...], local: tuple[Any, ...]) -> int | None:
    """:func:`loopback_owner` from sock_diag alone (microseconds): for what runs on every
    connection, where a /proc/net/tcp pass (milliseconds) under a flood of connections would stall
    the event loop. None when the peer is remote or the kernel does not answer."""
    try:
        if not _address(peer[0]).is_loopback:
            return None
        return _diag_owner(peer, local)
    except (ValueError, struct.error):
        return None


def tcp_owner(
    peer: tuple[Any, ...], local: tuple[Any, ...], proc_net: Path = PROC_NET
) -> int | None:
    """The uid owning this host's socket whose local end is ``peer`` and remote end ``local``:
    from sock_diag when the kernel offers it, else from /proc/net/tcp{,6}."""
    try:
        found = _diag_owner(peer, local)
    except (ValueError, struct.error):
        found = None
    return found if found is not None else _tcp_owner(peer, local, proc_net)


def _tcp_owner(peer: tuple[Any, ...], local: tuple[Any, ...], proc_net: Path) -> int | None:
    """The uid owning the socket whose local end is ``peer`` and remote end ``local``."""
    src, dst = _address(peer[0]), _address(local[0])
    files = ("tcp",) if src.version == 4 else ("tcp6",)
    want_local = f"{_hex_address(str(src))}:{int(peer[1]):04X}"
    want_remote = f"{_hex_address(str(dst))}:{int(local[1]):04X}"
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
    return loopback_owner(peer, local, proc_net)
