"""A tiny TCP rendezvous: rank 0 hands one byte string (NCCL's unique id) to every other rank.

For a torchrun-style launch (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT) without MPI, NCCL's ranks
still have to agree on the 128-byte `ncclUniqueId` that rank 0 creates. Rank 0 listens on
MASTER_ADDR:MASTER_PORT (on the loopback interface when MASTER_ADDR is a loopback address, else on
every interface, as torchrun's store does); every other rank connects, retrying until rank 0
listens, and sends a hello:

    hello   MAGIC (8 bytes) | rank (u32, big-endian) | world_size (u32)
    reply   b"OK" | length (u32) | payload          or          b"ER" | length (u32) | message (UTF-8)

Rank 0 answers once it has heard from ALL other ranks, so a successful return on any rank means every
rank has arrived. A hello from a rank outside 1..world_size-1, a repeated rank or another world size
gets an "ER" reply naming the problem, and rank 0 raises too. Everything is bounded by `timeout`
seconds (DistributedError naming the ranks still missing, or the address that never answered).
"""

import socket
import struct
import time

from .communicator import DistributedError

MAGIC = b"MINISFT1"
HELLO = struct.Struct(">8sII")
HEADER = struct.Struct(">2sI")


def _loopback(addr):
    try:
        return socket.gethostbyname(addr).startswith("127.")
    except OSError:
        return False


def _recv_exact(sock, n, deadline, what):
    out = bytearray()
    while len(out) < n:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            chunk = sock.recv(n - len(out))
        except socket.timeout:
            raise DistributedError(f"rendezvous: timed out reading {what}") from None
        if not chunk:
            raise DistributedError(f"rendezvous: connection closed while reading {what} ({len(out)} of {n} bytes)")
        out += chunk
    return bytes(out)


def _send(sock, tag, body):
    sock.sendall(HEADER.pack(tag, len(body)) + body)


def rendezvous(rank, world_size, addr, port, payload, timeout):
    """Return rank 0's `payload` (bytes) on every rank (module docstring). Non-zero ranks pass any payload."""
    deadline = time.monotonic() + timeout
    if world_size == 1:
        return bytes(payload)
    if rank == 0:
        return _serve(world_size, addr, port, bytes(payload), deadline, timeout)
    return _join(rank, world_size, addr, port, deadline, timeout)


def _serve(world_size, addr, port, payload, deadline, timeout):
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        server.bind(("127.0.0.1" if _loopback(addr) else "", port))
    except OSError as e:
        server.close()
        raise DistributedError(f"rendezvous: rank 0 cannot listen on port MASTER_PORT={port} ({e.strerror}); "
                               "expected a free port on rank 0's host") from None
    server.listen(world_size)
    waiting, error = {}, None
    try:
        while len(waiting) < world_size - 1 and error is None:
            server.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                conn, _ = server.accept()
            except socket.timeout:
                missing = sorted(set(range(1, world_size)) - set(waiting))
                raise DistributedError(f"rendezvous: ranks {missing} did not reach rank 0 at {addr}:{port} within "
                                       f"{timeout:g} s (a rank failed to start, or MASTER_ADDR/MASTER_PORT differ)") from None
            try:
                magic, r, size = HELLO.unpack(_recv_exact(conn, HELLO.size, min(deadline, time.monotonic() + 5.0), "a hello"))
            except DistributedError:
                conn.close()
                continue  # not one of ours (a port scanner, a stale client): keep listening
            if magic != MAGIC:
                conn.close()
                continue
            if size != world_size:
                error = f"a rank reported WORLD_SIZE={size}, expected {world_size} as rank 0"
            elif not 1 <= r < world_size:
                error = f"a rank reported RANK={r}, expected a rank in 1..{world_size - 1}"
            elif r in waiting:
                error = f"two processes reported RANK={r}"
            if error:
                _send(conn, b"ER", error.encode())
                conn.close()
            else:
                waiting[r] = conn
        for conn in waiting.values():
            if error:
                _send(conn, b"ER", error.encode())
            else:
                _send(conn, b"OK", payload)
    finally:
        for conn in waiting.values():
            conn.close()
        server.close()
    if error:
        raise DistributedError(f"rendezvous: {error}")
    return payload


def _join(rank, world_size, addr, port, deadline, timeout):
    last = None
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise DistributedError(f"rendezvous: rank {rank} could not reach rank 0 at MASTER_ADDR={addr} "
                                   f"MASTER_PORT={port} within {timeout:g} s ({last})")
        try:
            sock = socket.create_connection((addr, port), timeout=min(remaining, 5.0))
            break
        except OSError as e:
            last = e.strerror or str(e)
            time.sleep(min(0.05, max(0.0, remaining)))
    try:
        sock.sendall(HELLO.pack(MAGIC, rank, world_size))
        tag, n = HEADER.unpack(_recv_exact(sock, HEADER.size, deadline, "rank 0's reply"))
        body = _recv_exact(sock, n, deadline, "rank 0's reply")
    finally:
        sock.close()
    if tag != b"OK":
        raise DistributedError(f"rendezvous: rank 0 refused rank {rank}: {body.decode(errors='replace')}")
    return body
