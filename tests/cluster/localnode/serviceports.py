"""A Service's port at each of its endpoints, as kube-proxy maps it to the target port.

Inside a local pod a Service name resolves to its ready endpoints' addresses (``names``),
so a client dials ``NAME:PORT`` at a pod's own address. Where the Service's ``port`` differs
from its ``targetPort`` (the chart's gateway: 80 -> 8000), nothing listens there; the agent
listens on ``POD_ADDRESS:PORT`` for each pod it runs and carries every connection to
``POD_ADDRESS:TARGET``, which is what kube-proxy's rules amount to for a client that picked
that endpoint. Each pod has an address of its own, so two pods never share a listener.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping

log = logging.getLogger(__name__)

# (address, Service port) -> target port at that same address
PortMap = Mapping[tuple[str, int], int]
_CHUNK = 65536


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError):
        while data := await reader.read(_CHUNK):
            writer.write(data)
            await writer.drain()
    with contextlib.suppress(OSError):
        writer.write_eof()


class ServicePorts:
    """The listeners that map Service ports onto target ports for this node's pods."""

    def __init__(self) -> None:
        self._servers: dict[tuple[str, int], tuple[int, asyncio.Server]] = {}

    async def sync(self, wanted: PortMap) -> None:
        """Listen where ``wanted`` says and nowhere else."""
        for key, (target, server) in list(self._servers.items()):
            if wanted.get(key) != target:
                server.close()
                del self._servers[key]
        for (address, port), target in wanted.items():
            if (address, port) in self._servers:
                continue
            try:
                server = await asyncio.start_server(
                    lambda r, w, a=address, t=target: self._carry(r, w, a, t), address, port
                )
            except OSError as error:  # e.g. the pod's own process holds that port
                log.warning("cannot map %s:%d to port %d: %s", address, port, target, error)
                continue
            self._servers[(address, port)] = (target, server)
            log.info("Service port %s:%d -> %d", address, port, target)

    async def close(self) -> None:
        await self.sync({})

    @staticmethod
    async def _carry(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, address: str, target: int
    ) -> None:
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(address, target)
        except OSError:
            writer.close()  # as a connection to a pod that does not listen: closed
            return
        try:
            await asyncio.gather(_pump(reader, upstream_writer), _pump(upstream_reader, writer))
        finally:
            upstream_writer.close()
            writer.close()
