"""Peer catch-up: a node that installed a Raft snapshot newer than its event store (it was down
while the leader compacted) fetches the missing records from a peer before applying anything newer.

Ordering duty: committed entries are held by the apply pipeline from the moment the gap is seen
until every record up to the snapshot's store position is appended, synced and replayed into the
view; only then are the held entries applied, in order.
"""

from __future__ import annotations

import asyncio
from typing import Any, Awaitable, Callable, Sequence

import aiohttp
import msgpack

from cluster.apply import replay
from cluster.config import PeerConfig
from cluster.pipeline import ApplyPipeline
from storage import codec
from storage.log import Record

__all__ = ["PeerCatchup"]


class PeerCatchup:
    def __init__(
        self, pipeline: ApplyPipeline, peers: Sequence[PeerConfig], http: Callable[[], Awaitable[aiohttp.ClientSession]],
        internal_token: str, log: Any,
    ) -> None:
        self._pipeline = pipeline
        self._peers = peers
        self._http = http
        self._internal_token = internal_token
        self._log = log

    def on_snapshot_installed(self, store_raft_index: int) -> None:
        """pysyncobj installed a snapshot whose events our store holds up to ``store_raft_index``."""
        store = self._pipeline.store
        if store_raft_index <= store.last_raft_index or not self._pipeline.hold():
            return
        self._log.warning("catchup_needed", have=store.last_raft_index, need=store_raft_index)
        asyncio.get_running_loop().create_task(self._fill_gap(store_raft_index))

    async def _fill_gap(self, until_raft_index: int) -> None:
        pipeline, store = self._pipeline, self._pipeline.store
        while store.last_raft_index < until_raft_index:
            for peer in self._peers:
                try:
                    records = await self._fetch_records(peer.api_url, store.last_raft_index)
                except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as exc:
                    self._log.warning("catchup_peer_failed", peer=peer.node_id, error=str(exc))
                    continue
                for record in records:
                    if record.raft_index > until_raft_index:
                        break
                    store.append([record])
                    replay(pipeline.view, record.raft_index, codec.decode(record.payload))
                store.sync()
                if records:
                    break
            else:
                await asyncio.sleep(0.2)
        self._log.info("catchup_done", raft_index=store.last_raft_index, revision=pipeline.view.revision)
        pipeline.release()

    async def _fetch_records(self, api_url: str, after_raft_index: int) -> list[Record]:
        http = await self._http()
        async with http.get(
            f"{api_url}/internal/records",
            params={"after_raft_index": str(after_raft_index), "limit": "5000"},
            headers={"Authorization": f"Bearer {self._internal_token}"},
            timeout=aiohttp.ClientTimeout(total=10),
        ) as resp:
            if resp.status != 200:
                raise ValueError(f"peer answered {resp.status}")
            body = await resp.read()
        return [Record(*item) for item in msgpack.unpackb(body, raw=False)]
