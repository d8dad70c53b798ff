"""The Ray Serve request router of the model deployment: prefix affinity first, then the least loaded replica.

Owns: `PrefixAffinityRouter`, a `ray.serve.request_router.RequestRouter` that reads the `route_key` keyword of
`LlamaReplica.generate` calls (routing.prefix_key of the prompt), ranks the replica that holds the longest matching
prefix first (unless its queue is `imbalance` requests longer than the shortest), and otherwise offers every
replica, of which Ray's base class picks the one with the shortest queue that still accepts.
Must not: keep anything but the affinity table (Ray owns replica health, queue lengths and retries).
"""

from __future__ import annotations

import random

from ray.serve.request_router import FIFOMixin, LocalityMixin, MultiplexMixin, RequestRouter

from .routing import AffinityTable, prefer


class PrefixAffinityRouter(FIFOMixin, LocalityMixin, MultiplexMixin, RequestRouter):
    def initialize_state(self, imbalance: int = 2, table_size: int = 8192, **kwargs):
        self._affinity = AffinityTable(table_size)
        self._imbalance = int(imbalance)

    @staticmethod
    def _key(pending_request) -> list[int]:
        if pending_request is None or not pending_request.kwargs:
            return []
        key = pending_request.kwargs.get("route_key")
        return list(key) if isinstance(key, (list, tuple)) else []

    async def choose_replicas(self, candidate_replicas, pending_request=None):
        if not candidate_replicas:
            return []
        by_id = {r.replica_id.unique_id: r for r in candidate_replicas}
        key = self._key(pending_request)
        if key:
            cache = self.replica_queue_len_cache
            qlen = {rid: cache.get(r.replica_id) for rid, r in by_id.items()}
            best = prefer(self._affinity, key, list(by_id), qlen, self._imbalance)
            if best is not None:
                rest = [r for rid, r in by_id.items() if rid != best]
                random.shuffle(rest)
                return [[by_id[best]], rest] if rest else [[by_id[best]]]
        group = list(candidate_replicas)
        random.shuffle(group)  # the base class takes the shortest queue, the first of equals: spread the ties
        return [group]

    def on_request_routed(self, pending_request, replica_id, result):
        key = self._key(pending_request)
        if key:
            self._affinity.record(replica_id.unique_id, key)

    def on_replica_actor_died(self, replica_id):
        super().on_replica_actor_died(replica_id)
        self._affinity.drop(replica_id.unique_id)

    def update_replicas(self, replicas):
        super().update_replicas(replicas)
        self._affinity.keep_only(r.replica_id.unique_id for r in replicas)
