"""Redis in cluster mode for the replay store: each key goes to the primary that owns its hash
slot, over one pipelined ``RedisClient`` connection per node.

Why our own and not coredis: ``python -m bench.redis_clients`` measured coredis 6.9 at ~120 µs
of CPU per ``SET NX PX`` against ~11 µs for ``resp.RedisClient`` (64 tasks, 20k commands), far
outside the ~20 % issue 12 allows; cluster routing is a small addition to the lean client.

Invariants:
- the slot map comes from ``CLUSTER NODES`` (a bulk string, so the RESP2 subset suffices),
  read lazily from the seed address (the URL) or any node already known;
- ``MOVED`` updates the map and retries on the named node; ``ASK`` retries once there after
  ``ASKING``, without touching the map; at most ``MAX_REDIRECTS`` hops, then fail closed;
- a node that cannot be asked is ``RedisUnavailable`` for the keys it owns (503
  ``replay_store_unavailable``), never a write elsewhere; the map is then re-read, at most once
  a second, so a failover's new primary is found;
- no URL or password in any message (node addresses are host:port only).
"""

from __future__ import annotations

import asyncio
import binascii
import contextlib
import dataclasses

from gateway.replay.address import RedisAddress
from gateway.replay.resp import RedisClient, RedisReplyError, RedisUnavailable, Reply

SLOTS = 16384
MAX_REDIRECTS = 5
REFRESH_INTERVAL = 1.0  # seconds between slot-map reads after a failure


def crc16(data: bytes) -> int:
    """CRC16-CCITT (XMODEM), the checksum Redis Cluster hashes keys with. ``binascii.crc_hqx`` is
    that very CRC, in C: ~0.4 µs for a replay key where a Python loop took ~10 µs."""
    return binascii.crc_hqx(data, 0)


def key_slot(key: bytes) -> int:
    """The key's hash slot; a non-empty ``{tag}`` hashes alone, as Redis Cluster specifies."""
    start = key.find(b"{")
    if start >= 0:
        end = key.find(b"}", start + 1)
        if end > start + 1:
            key = key[start + 1 : end]
    return crc16(key) % SLOTS


Node = tuple[str, int]


def parse_cluster_nodes(text: str, default_host: str) -> dict[Node, list[tuple[int, int]]]:
    """{primary (host, port): [(first slot, last slot), ...]} from a ``CLUSTER NODES`` reply.

    Primaries flagged ``fail`` or ``noaddr`` are left out (their slots stay unrouted until the
    cluster promotes a replica); ``[slot->-id]`` migration entries are not ownership.
    """
    primaries: dict[Node, list[tuple[int, int]]] = {}
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 8:
            continue
        flags = fields[2].split(",")
        if "master" not in flags or "fail" in flags or "noaddr" in flags:
            continue
        address, _, hostname = fields[1].partition(",")  # ip:port@cport[,hostname]
        ip, _, port = address.partition("@")[0].rpartition(":")
        try:
            node = (hostname or ip or default_host, int(port))
            ranges = [
                (int(lo), int(hi or lo))
                for lo, _, hi in (s.partition("-") for s in fields[8:] if not s.startswith("["))
            ]
        except ValueError:
            continue
        primaries[node] = ranges
    return primaries


class ClusterClient:
    """Send keyed commands to the primary owning the key's slot, following redirections."""

    def __init__(self, url: str, *, timeout: float = 0.5) -> None:
        self.seed = RedisAddress.parse(url)
        self.timeout = timeout
        self._nodes: dict[Node, RedisClient] = {}
        self._slots: list[Node | None] = [None] * SLOTS
        self._primaries: list[Node] = []
        self._stale = True
        self._last_refresh = -REFRESH_INTERVAL
        self._refresh_lock = asyncio.Lock()
        self._background: asyncio.Task[None] | None = None

    def _node(self, node: Node) -> RedisClient:
        client = self._nodes.get(node)
        if client is None:
            address = dataclasses.replace(self.seed, host=node[0], port=node[1], path=None, db=0)
            client = self._nodes[node] = RedisClient(address, timeout=self.timeout)
        return client

    async def refresh(self) -> None:
        """Re-read the slot map from the seed or any known node; RedisUnavailable if none answers."""
        async with self._refresh_lock:
            loop = asyncio.get_running_loop()
            self._last_refresh = loop.time()
            candidates = [(self.seed.host, self.seed.port), *self._nodes]
            for node in dict.fromkeys(candidates):
                try:
                    reply = await self._node(node).execute(b"CLUSTER", b"NODES")
                except RedisReplyError as exc:
                    if exc.code in ("WRONGPASS", "NOAUTH", "NOPERM"):
                        raise  # the same credentials go to every node: say so instead of "unreachable"
                    continue
                except RedisUnavailable:
                    continue
                if not isinstance(reply, bytes):
                    continue
                primaries = parse_cluster_nodes(reply.decode("utf-8", "replace"), node[0])
                if not primaries:
                    continue
                slots: list[Node | None] = [None] * SLOTS
                for primary, ranges in primaries.items():
                    for first, last in ranges:
                        lo, hi = max(0, first), min(SLOTS - 1, last)
                        slots[lo : hi + 1] = [primary] * max(0, hi + 1 - lo)
                self._slots, self._primaries, self._stale = slots, list(primaries), False
                return
            raise RedisUnavailable("no Redis cluster node answered")

    async def _ensure_map(self) -> None:
        if not self._primaries:
            if self._refresh_lock.locked():
                async with self._refresh_lock:
                    pass  # the first read of the map is under way (a burst at start-up): wait for it
            elif asyncio.get_running_loop().time() - self._last_refresh >= REFRESH_INTERVAL:
                await self.refresh()
            if not self._primaries:
                raise RedisUnavailable("the Redis cluster's slot map is unknown")
        elif self._stale:
            self._reread()

    def _reread(self) -> None:
        """Re-read the map behind the requests (at most once per REFRESH_INTERVAL): the stale map
        keeps serving meanwhile (MOVED corrects a slot it has wrong, a dead node fails its keys
        closed) instead of making them wait."""
        self._stale = True
        due = asyncio.get_running_loop().time() - self._last_refresh >= REFRESH_INTERVAL
        if due and (self._background is None or self._background.done()):
            self._background = asyncio.create_task(self._refresh_quietly())

    async def _refresh_quietly(self) -> None:
        with contextlib.suppress(RedisUnavailable, RedisReplyError):
            await self.refresh()  # on failure the map stays stale: the next command after REFRESH_INTERVAL retries

    async def execute_keyed(self, key: bytes, *args: bytes) -> Reply:
        """Send ``args`` (a command on ``key``) to the key's primary, following MOVED and ASK."""
        await self._ensure_map()
        slot = key_slot(key)
        node = self._slots[slot]
        asking = False
        for _ in range(MAX_REDIRECTS + 1):
            if node is None:
                self._reread()
                raise RedisUnavailable("no Redis cluster node serves this key's slot")
            try:
                return await self._node(node).execute(*args, asking=asking)
            except RedisUnavailable:
                self._reread()  # a failover may have promoted a replica
                raise
            except RedisReplyError as exc:
                if exc.code not in ("MOVED", "ASK"):
                    raise
                target = _redirect_target(str(exc), node[0])
                if target is None:
                    raise RedisUnavailable("the Redis cluster sent a malformed redirection") from None
                if exc.code == "MOVED":
                    self._slots[slot] = target
                    self._reread()  # one slot moved, maybe more
                node, asking = target, exc.code == "ASK"
        raise RedisUnavailable("the Redis cluster redirected too many times")

    async def primaries(self) -> list[RedisClient]:
        """A client per primary node (the start-up checks ask each)."""
        await self.refresh()
        return [self._node(node) for node in self._primaries]

    async def close(self) -> None:
        if self._background is not None:
            self._background.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._background
        for client in self._nodes.values():
            await client.close()
        self._nodes.clear()


def _redirect_target(message: str, default_host: str) -> Node | None:
    """The node named by ``MOVED 3999 host:port`` or ``ASK 3999 host:port``."""
    parts = message.split()
    if len(parts) != 3:
        return None
    host, _, port = parts[2].rpartition(":")
    try:
        return (host or default_host, int(port))
    except ValueError:
        return None
