"""What finding a loopback peer's uid costs, once per request on the routes that need an owner
(job registration, end, listings): the kernel's sock_diag look-up by four-tuple (used), and the
/proc/net/tcp fallback, which lists every socket of the host. Timed with 10, 1,000 and 4,000 open
loopback connections.

.venv/bin/python benchmarks/bench_peer_uid.py
"""

from __future__ import annotations

import resource
import socket
import statistics
import time

from carbonwatch.scheduler.peer import PROC_NET, _diag_owner, _tcp_owner


def main() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 20_000), hard))
    server = socket.create_server(("127.0.0.1", 0), backlog=8192)
    clients: list[socket.socket] = []
    accepted: list[socket.socket] = []
    for target in (10, 1000, 4000):
        while len(clients) < target:
            clients.append(socket.create_connection(server.getsockname()))
            accepted.append(server.accept()[0])
        conn = accepted[-1]
        peer, local = conn.getpeername(), conn.getsockname()
        lines = sum(1 for _ in open(PROC_NET / "tcp"))  # noqa: SIM115
        for how, look_up in (("sock_diag", _diag_owner),
                             ("/proc/net/tcp", lambda p, loc: _tcp_owner(p, loc, PROC_NET))):
            times = []
            for _ in range(50):
                t0 = time.perf_counter()
                uid = look_up(peer, local)
                times.append(time.perf_counter() - t0)
            assert uid is not None
            print(f"{target:>5} loopback connections ({lines} sockets listed), {how:>13}: median "
                  f"{statistics.median(times) * 1e3:.3f} ms per look-up "
                  f"(p90 {statistics.quantiles(times, n=10)[8] * 1e3:.3f} ms)")
    for s in clients + accepted + [server]:
        s.close()


if __name__ == "__main__":
    main()
