"""A Flower Grid whose sites are our real ClientApp, called in this process.

Every message is serialised to Flower's wire format and back on the way out and on the
way in, as through a SuperLink, so no Python object is shared between the coordinator
and a site. Everything the coordinator pulls is kept in `received` for inspection.
"""
from __future__ import annotations

import time
from typing import Iterable
from uuid import uuid4

from flwr.app import Context, Message, RecordDict
from flwr.common.serde import message_from_proto, message_to_proto
from flwr.serverapp import Grid
from flwr.supercore.task_identity import TaskIdentity

from client.app import app as client_app


def _wire(message: Message, counter: dict[int, int] | None = None, node: int = 0) -> Message:
    proto = message_to_proto(message)
    if counter is not None:
        counter[node] = counter.get(node, 0) + proto.ByteSize()
    return message_from_proto(proto)


class SitesInProcess(Grid):
    def __init__(self, sites: int, run_config: dict, *, node_config=None) -> None:
        # What Flower's ServerApp runtime sets in its process before the app runs.
        TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 0
        self._contexts = {
            1000 + i: Context(run_id=1, node_id=1000 + i, state=RecordDict(), run_config=dict(run_config),
                              node_config=dict(node_config(i) if node_config else
                                               {"partition-id": i, "num-partitions": sites}))
            for i in range(sites)}
        self._replies: dict[str, Message] = {}
        self.received: list[Message] = []
        self.bytes_to: dict[int, int] = {}  # node -> serialised bytes of the instructions it received
        self.bytes_from: dict[int, int] = {}  # node -> serialised bytes of its replies
        self.count_phase = ""  # count only this message type's bytes ("train"); "" counts all
        self.silence_after: dict[int, int] = {}  # node -> messages it answers before it disconnects
        self._answered: dict[int, int] = {}

    def set_run(self, run) -> None:
        raise NotImplementedError

    @property
    def run(self):
        raise NotImplementedError

    def create_message(self, content, message_type, dst_node_id, group_id, ttl=None) -> Message:
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        return list(self._contexts)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids = []
        for message in messages:
            message.metadata.__dict__["_message_id"] = str(uuid4())
            ids.append(message.metadata.message_id)
            node = message.metadata.dst_node_id
            self._answered[node] = self._answered.get(node, 0) + 1
            if self._answered[node] > self.silence_after.get(node, float("inf")):
                continue
            counted = not self.count_phase or message.metadata.message_type == self.count_phase
            incoming = _wire(message, self.bytes_to if counted else None, node)
            incoming.metadata.__dict__["_run_id"] = 1
            reply = client_app(message=incoming, context=self._contexts[node])
            reply.metadata.__dict__["_src_node_id"] = node
            self._replies[message.metadata.message_id] = _wire(reply, self.bytes_from if counted else None, node)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        pulled = [self._replies.pop(i) for i in list(message_ids) if i in self._replies]
        self.received.extend(pulled)
        return pulled

    def send_and_receive(self, messages, *, timeout=None) -> Iterable[Message]:
        ids = set(self.push_messages(messages))
        deadline = time.monotonic() + (timeout or 0)
        replies = list(self.pull_messages(ids))
        while len(replies) < len(ids) and time.monotonic() < deadline:
            time.sleep(0.05)
        return replies
