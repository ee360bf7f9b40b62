"""Flower's message flow without Flower processes: SpryStrategy and the ClientApp's functions
called directly, messages delivered by a fake Grid (Flower's simulation runtime needs ray)."""

from __future__ import annotations

from flwr.app import Context, Message, RecordDict
from flwr.supercore.task_identity import TaskIdentity  # internal API of flwr 1.42

from spry_flwr import client_app

TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 1, 1


class FakeGrid:
    """Nodes 101.. hosting shards 0..n-1; `silent` nodes never answer (a dead node)."""

    def __init__(self, n_nodes: int, run_config: dict, silent: tuple[int, ...] = ()) -> None:
        self.nodes = {101 + i: i for i in range(n_nodes)}
        self.n = n_nodes
        self.run_config = run_config
        self.silent = set(silent)
        self.states = {node: RecordDict() for node in self.nodes}

    def get_node_ids(self):
        return list(self.nodes)

    def _context(self, node: int) -> Context:
        return Context(run_id=1, node_id=node,
                       node_config={"partition-id": self.nodes[node], "num-partitions": self.n},
                       state=self.states[node], run_config=self.run_config)

    def send_and_receive(self, messages, timeout=None):
        replies = []
        for m in messages:
            node = m.metadata.dst_node_id
            if self.nodes[node] in self.silent:
                continue
            ctx = self._context(node)
            fn = client_app.query if m.metadata.message_type == "query" else client_app.train
            try:
                reply = fn(m, ctx)
            except Exception as e:  # Flower turns a raising ClientApp into an error reply
                from flwr.app import Error
                reply = Message(Error(code=2, reason=f"{type(e)}:<'{e}'>"), reply_to=m)
            replies.append(reply)
        return replies


def run(config: str, out_dir: str, n_nodes: int, run_config_extra: dict | None = None,
        silent: tuple[int, ...] = ()) -> dict:
    from spry_flwr_native import Server
    from spry_flwr.strategy import SpryStrategy

    rc = {"spry-config": config, "spry-overrides": "", "fault": ""}
    rc.update(run_config_extra or {})
    server = Server(out_dir, config, None, False)
    strategy = SpryStrategy(server, min_nodes=n_nodes, round_timeout=5.0, out_dir=out_dir)
    return strategy.run(FakeGrid(n_nodes, rc, silent))
