"""A loopback TCP proxy that injects network faults between quiltsync and the local S3.

Faults (set at any time, cleared with ``clear()``):
- ``latency``: seconds added before each chunk is forwarded, both ways;
- ``reset_share``: this share of connections, new or kept alive, is reset (RST) at
  their next request chunk; deterministic (the 1st, then about every 1/share-th),
  so a fault window with any traffic at all sees resets;
- ``blackhole``: nothing moves; connections hang (as in a partition) and resume when cleared;
- ``refuse``: new connections are closed at once with RST;
- ``cut_after``: responses are cut after this many bytes, then the connection is reset;
- ``corrupt``: in requests, the first byte of ``corrupt`` (a pattern the sender's body
  holds) is flipped where a chunk holds the whole pattern, ``corrupt_times`` times in
  all: bytes damaged on the wire, after the client computed its checksums.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import threading


class FaultProxy:
    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.latency = 0.0
        self.reset_share = 0.0
        self.blackhole = False
        self.refuse = False
        self.cut_after: int | None = None
        self.corrupt: bytes | None = None
        self.corrupt_times = 0
        self.connections = 0
        self.faults = 0
        self._gen = 0  # bumped whenever faults are set: every connection decides afresh
        self._decided = 0  # reset decisions taken since reset_share was last set
        self._loop = asyncio.new_event_loop()
        self._flowing: asyncio.Event | None = None
        self._server: asyncio.base_events.Server | None = None
        self.port = 0
        self._thread = threading.Thread(target=self._loop.run_forever, name="fault-proxy", daemon=True)

    def start(self) -> FaultProxy:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    async def _start(self) -> None:
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    def stop(self) -> None:
        async def _stop() -> None:
            assert self._server is not None
            self._server.close()
            self._flowing.set()  # type: ignore[union-attr]

        asyncio.run_coroutine_threadsafe(_stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def set(self, **faults: object) -> None:
        for k, v in faults.items():
            if not hasattr(self, k):
                raise AttributeError(k)
            setattr(self, k, v)
        self._gen += 1
        self._decided = 0
        self._loop.call_soon_threadsafe(self._sync_flow)

    def _take_reset(self) -> bool:
        """Exactly ``reset_share`` of decisions say reset, starting with the first."""
        share = self.reset_share
        self._decided += 1
        c = self._decided
        return share > 0 and int(c * share + (1 - share)) > int((c - 1) * share + (1 - share))

    def clear(self) -> None:
        self.set(latency=0.0, reset_share=0.0, blackhole=False, refuse=False, cut_after=None, corrupt=None,
                 corrupt_times=0)

    def _sync_flow(self) -> None:
        assert self._flowing is not None
        if self.blackhole:
            self._flowing.clear()
        else:
            self._flowing.set()

    @staticmethod
    def _reset(writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        if self.refuse:
            self.faults += 1
            self._reset(writer)
            return
        decided_gen = [-1]
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            self._reset(writer)
            return
        cut = self.cut_after

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter, downstream: bool) -> None:
            sent = 0
            try:
                while True:
                    data = await src.read(65536)
                    if not data:
                        break
                    await self._flowing.wait()  # type: ignore[union-attr]
                    if self.latency:
                        await asyncio.sleep(self.latency)
                    if not downstream and self.reset_share > 0 and decided_gen[0] != self._gen:
                        decided_gen[0] = self._gen
                        reset = self._take_reset()
                    else:
                        reset = False
                    if not downstream and self.corrupt and self.corrupt_times > 0 \
                            and (at := data.find(self.corrupt)) >= 0:
                        self.corrupt_times -= 1
                        self.faults += 1
                        data = data[:at] + bytes([data[at] ^ 0xFF]) + data[at + 1:]
                    if reset:
                        self.faults += 1
                        self._reset(writer)
                        self._reset(up_writer)
                        return
                    if downstream and cut is not None and sent + len(data) > cut:
                        dst.write(data[: max(0, cut - sent)])
                        await dst.drain()
                        self.faults += 1
                        self._reset(dst)
                        self._reset(up_writer)
                        return
                    dst.write(data)
                    await dst.drain()
                    sent += len(data)
            except (ConnectionError, OSError):
                pass
            finally:
                try:
                    dst.close()
                except Exception:
                    pass

        await asyncio.gather(pipe(reader, up_writer, False), pipe(up_reader, writer, True))
