"""Log lines name a stream by hatchway.names.stream_label, on the server and in the agent."""

from __future__ import annotations

import secrets

from hatchway.names import stream_label
from hatchway.server.cluster import REPLICA_ID_LEN, origin_of


def test_streams_of_one_replica_get_labels_of_their_own() -> None:
    replica = secrets.token_hex(REPLICA_ID_LEN // 2)
    ids = [replica + secrets.token_hex(16) for _ in range(50)]  # as hatchway.server.relay makes them
    assert {origin_of(i) for i in ids} == {replica}
    labels = [stream_label(i) for i in ids]
    assert len(set(labels)) == len(ids)  # the replica's prefix told none of them apart
    assert all(len(label) == 8 and replica not in label for label in labels)
    assert all(i.endswith(label) for i, label in zip(ids, labels, strict=True))
