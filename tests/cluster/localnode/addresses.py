"""Pod addresses for local nodes: each pod gets an IP of its own, local to this machine.

Why not loopback (127.x): the EndpointSlice API refuses loopback addresses, so Services
would never list a local pod. Instead one route makes a whole range local, the way
127.0.0.0/8 is: ``ip route replace local 198.18.0.0/15 dev lo`` (the harness adds it;
it needs CAP_NET_ADMIN). Every address in the range can then be bound and reached from
this machine with no further setup, and two pods can both listen on port 8080.
198.18.0.0/15 is reserved for benchmarking (RFC 2544): no real network uses it.

Each node agent holds one /20 of it for its life through a lock file, so agents of
clusters running side by side never hand out the same address: its ``.1`` is the node's
own address and pods get the rest, never reused while the agent lives (a late probe or
client of a deleted pod must not reach its successor).
"""

from __future__ import annotations

import fcntl
import ipaddress
import os
from pathlib import Path
from typing import IO

from tests.cluster.harness import LOCAL_POD_RANGE

POD_RANGE = ipaddress.IPv4Network(LOCAL_POD_RANGE)
BLOCK_PREFIX = 20


class AddressesExhausted(RuntimeError):
    """Every block is held by another agent, or this node handed out all of its own."""


class AddressBlock:
    """One locked /20 of ``POD_RANGE``."""

    def __init__(self, lock_dir: Path) -> None:
        lock_dir.mkdir(parents=True, exist_ok=True)
        self._lock: IO[str] | None = None
        for network in POD_RANGE.subnets(new_prefix=BLOCK_PREFIX):
            handle = open(lock_dir / f"{network.network_address}.lock", "w")  # noqa: SIM115
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.close()
                continue
            handle.write(f"{os.getpid()}\n")
            handle.flush()
            self._lock = handle  # held, and so the block, until close() or exit
            self.network = network
            break
        else:
            raise AddressesExhausted(f"every /{BLOCK_PREFIX} of {POD_RANGE} is in use")
        self._next = 2

    @property
    def node_address(self) -> str:
        return str(self.network[1])

    def allocate(self) -> str:
        """A fresh pod address."""
        if self._next >= self.network.num_addresses - 1:
            raise AddressesExhausted(f"node block {self.network} has no address left")
        address = str(self.network[self._next])
        self._next += 1
        return address

    def close(self) -> None:
        if self._lock is not None:
            self._lock.close()
            self._lock = None
