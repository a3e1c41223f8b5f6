#!/usr/bin/python3
"""Test listener for the firewall scenario: accepts TCP connections on every port given.

Each connection gets one line, "keel-test-listener PORT", and is closed. The
scenario runs it on every host and service port, so that a port the firewall
lets through answers and a port it drops times out (nothing is refused).
"""

from __future__ import annotations

import asyncio
import sys


async def serve(port: int) -> asyncio.Server:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(f"keel-test-listener {port}\n".encode())
        try:
            await writer.drain()
        finally:
            writer.close()

    return await asyncio.start_server(answer, host=None, port=port)  # every address of the test host


async def main(ports: list[int]) -> None:
    servers = [await serve(port) for port in ports]
    await asyncio.gather(*(server.serve_forever() for server in servers))


if __name__ == "__main__":
    asyncio.run(main([int(arg) for arg in sys.argv[1:]]))
