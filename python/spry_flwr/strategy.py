"""SpryStrategy: a Spry round over Flower's Grid, with the Rust core doing the work.

Each round the Rust ``Server`` plans it (samples logical clients, assigns units); the strategy
groups the sampled clients by the SuperNode whose shard holds them (client ``c`` lives on the
node with ``partition-id == c % num-partitions``), sends each node one message with the tensors
its clients train (``arrays``), the other global tensors their forward pass reads (``context``)
and a ConfigRecord (round, seed, clients, each client's assigned tensor names, K, method, mode),
and hands the replies to ``Server.close_round``, whose Rust validation drops a malformed, stale
or non-finite reply (logged here) and whose per-tensor aggregation runs the server optimizer.
A node that does not answer within the timeout is left out: its units keep their values.

Per-iteration mode exchanges one message per step: the nodes upload K JVP scalars per client
(plus the exact head gradients) and the server replays the directions from the seed; the next
step's message carries only the tensors that step changed (a node that missed a step gets the
whole global again).
"""

from __future__ import annotations

import csv
import json
import os
import time
from collections.abc import Iterable
from logging import INFO, WARNING

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from .codec import content_bytes, from_record, split_client_keys, to_record

NODE_CSV_HEADER = [
    "round",
    "step",
    "node",
    "partition",
    "clients",
    "bytes_sent_by_node",
    "bytes_received_by_node",
    "node_peak_rss_mib",
    "node_seconds",
    "status",
]


class SpryStrategy(Strategy):
    """Spry's server over a Grid; ``server`` is a ``spry_flwr_native.Server``."""

    def __init__(
        self,
        server,
        min_nodes: int = 1,
        round_timeout: float = 600.0,
        wait_nodes_timeout: float = 120.0,
        out_dir: str | None = None,
    ) -> None:
        self.server = server
        self.min_nodes = min_nodes
        self.round_timeout = round_timeout
        self.wait_nodes_timeout = wait_nodes_timeout
        self.out_dir = out_dir
        self.shards: dict[int, tuple[int, int]] = {}  # node id -> (partition-id, num-partitions)
        self.names: list[str] = list(server.names)
        self.settings = json.loads(server.settings_json)
        self.round_plan: dict | None = None
        self.sent: dict[int, int] = {}  # node -> payload bytes of its message this round/step
        self.synced: dict[int, tuple[int, int]] = {}  # per-iteration: node -> (round, step) it holds
        self.node_rows: list[list] = []
        self.t_round = 0.0

    # ------------------------------------------------------------------ nodes and shards
    def summary(self) -> None:
        log(INFO, "SpryStrategy(min_nodes=%s, round_timeout=%s, mode=%s, method=%s, K=%s)",
            self.min_nodes, self.round_timeout, self.server.comm, self.settings["method"],
            self.settings["k"])

    def wait_nodes(self, grid: Grid) -> list[int]:
        """Online node ids, after waiting (up to wait_nodes_timeout) for min_nodes of them."""
        deadline = time.time() + self.wait_nodes_timeout
        while len(ids := sorted(grid.get_node_ids())) < self.min_nodes:
            if time.time() > deadline:
                log(WARNING, "only %d of %d nodes after %.0f s; going on", len(ids),
                    self.min_nodes, self.wait_nodes_timeout)
                break
            time.sleep(1.0)
        return ids

    def learn_shards(self, grid: Grid, nodes: list[int]) -> None:
        """Asks nodes not seen before which shard their node config names (one QUERY each)."""
        new = [n for n in nodes if n not in self.shards]
        if not new:
            return
        msgs = [Message(content=RecordDict({"config": ConfigRecord({"want": "shard"})}),
                        dst_node_id=n, message_type=MessageType.QUERY) for n in new]
        for reply in grid.send_and_receive(msgs, timeout=self.round_timeout):
            node = reply.metadata.src_node_id
            if reply.has_error():
                log(WARNING, "node %s did not say its shard: %s", node, reply.error)
                continue
            m = reply.content["metrics"]
            self.shards[node] = (int(m["partition-id"]), int(m["num-partitions"]))
            log(INFO, "node %s holds shard %s of %s", node, *self.shards[node])

    def group_clients(self, plan: dict, nodes: list[int]) -> dict[int, list[int]]:
        """Sampled, not dropped clients of the plan grouped by the node holding their shard."""
        dropped = set(plan["dropped"])
        by_node: dict[int, list[int]] = {}
        for c in plan["sampled"]:
            if c in dropped:
                continue
            hosts = [n for n in nodes if n in self.shards
                     and c % self.shards[n][1] == self.shards[n][0]]
            if not hosts:
                log(WARNING, "round %s: no online node holds client %s; its units keep their "
                    "values", plan["round"], c)
                continue
            by_node.setdefault(hosts[0], []).append(c)
        return by_node

    # ------------------------------------------------------------------ messages
    def _config(self, plan: dict, server_round: int, clients: list[int], step: int) -> ConfigRecord:
        cfg = {
            "round": int(plan["round"]),
            "flwr-round": int(server_round),
            "step": int(step),
            "seed": int(self.settings["seed"]),
            "clients": [int(c) for c in clients],
            "k": int(self.settings["k"]),
            "method": str(self.settings["method"]),
            "mode": self.server.comm,
        }
        for c in clients:
            cfg[f"assigned.{c}"] = list(plan["assigned"][str(c)])
        return ConfigRecord(cfg)

    def _message(self, node: int, content: RecordDict, server_round: int) -> Message:
        self.sent[node] = content_bytes(content)
        return Message(content=content, dst_node_id=node, message_type=MessageType.TRAIN,
                       group_id=str(server_round), ttl=self.round_timeout + 60.0)

    def _full_content(self, plan: dict, server_round: int, clients: list[int],
                      step: int, global_arrays: dict[str, np.ndarray]) -> RecordDict:
        trained = {n for c in clients for n in plan["assigned"][str(c)]}
        return RecordDict({
            "arrays": to_record({n: global_arrays[n] for n in self.names if n in trained}),
            "context": to_record({n: global_arrays[n] for n in self.names if n not in trained}),
            "config": self._config(plan, server_round, clients, step),
        })

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        """Plans the round in Rust and builds one message per node with sampled clients."""
        self.t_round = time.time()
        nodes = self.wait_nodes(grid)
        self.learn_shards(grid, nodes)
        plan = json.loads(self.server.plan())
        self.round_plan = plan
        self.by_node = self.group_clients(plan, nodes)
        global_arrays = self.server.arrays()
        self.sent = {}
        msgs = []
        for node, clients in sorted(self.by_node.items()):
            log(INFO, "round %s: node %s <- clients %s, tensors %s", plan["round"], node, clients,
                sorted({n for c in clients for n in plan["assigned"][str(c)]}))
            content = self._full_content(plan, server_round, clients, 0, global_arrays)
            msgs.append(self._message(node, content, server_round))
        return msgs

    # ------------------------------------------------------------------ replies
    def _node_row(self, server_round: int, step: int, node: int, reply: Message | None,
                  status: str) -> None:
        got = content_bytes(reply.content) if reply is not None and not reply.has_error() else 0
        m = reply.content.get("metrics") if reply is not None and not reply.has_error() else None
        rss = float(m["peak-rss-mib"]) if m is not None and "peak-rss-mib" in m else ""
        secs = float(m["seconds"]) if m is not None and "seconds" in m else ""
        shard = self.shards.get(node, ("", ""))[0]
        self.node_rows.append([server_round, step, node, shard,
                               " ".join(map(str, self.by_node.get(node, []))),
                               got, self.sent.get(node, 0), rss, secs, status])

    def _replies_by_node(self, server_round: int, step: int,
                         replies: Iterable[Message]) -> list[Message]:
        """Replies without an error; error replies and silent nodes logged and recorded."""
        ok, seen = [], set()
        for msg in replies:
            node = msg.metadata.src_node_id
            seen.add(node)
            if msg.has_error():
                log(WARNING, "round %s step %s: node %s replied with an error, dropped: %s",
                    server_round, step, node, msg.error)
                self._node_row(server_round, step, node, msg, "error")
                continue
            ok.append(msg)
        for node in self.by_node:
            if node not in seen:
                log(WARNING, "round %s step %s: no reply from node %s within %.0f s; its "
                    "clients' units keep their values", server_round, step, node,
                    self.round_timeout)
                self._node_row(server_round, step, node, None, "timeout")
        return ok

    def aggregate_train(self, server_round: int, replies: Iterable[Message]):
        """Per-epoch: every client update of every reply to the Rust validation + aggregation."""
        updates, dropped = [], []
        for msg in self._replies_by_node(server_round, 0, replies):
            node = msg.metadata.src_node_id
            try:
                per_client = split_client_keys(from_record(msg.content["arrays"]))
                metrics = msg.content["metrics"]
                round_ = int(msg.content["config"]["round"])
                for c, arrays in per_client.items():
                    bad = [k for k, v in arrays.items() if v.dtype != np.float32]
                    if bad:
                        raise ValueError(f"client {c}: tensors {bad} are not float32")
                    updates.append((c, round_, int(metrics[f"n-examples.{c}"]),
                                    float(metrics[f"loss.{c}"]), int(metrics[f"skipped.{c}"]),
                                    arrays))
                self._node_row(server_round, 0, node, msg, "ok")
            except (KeyError, ValueError, TypeError) as e:
                log(WARNING, "round %s: malformed reply from node %s, dropped: %s",
                    server_round, node, e)
                self._node_row(server_round, 0, node, msg, f"malformed: {e}")
                updates = [u for u in updates if u[0] not in self.by_node[node]]
                dropped += [(c, f"malformed reply: {e}") for c in self.by_node[node]]
        report = json.loads(self.server.close_round(updates, self.wall_offset, dropped))
        return self._log_round(server_round, report["metrics"], report["rejected"],
                               report["failed"])

    def _log_round(self, server_round: int, metrics: dict, rejected: list, failed):
        for client, reason in rejected:
            log(WARNING, "round %s: update of client %s rejected: %s", server_round, client,
                reason)
        if failed:
            log(WARNING, "round %s failed, the global state is unchanged: %s", server_round,
                failed)
        test = metrics.get("test") or {}
        log(INFO, "round %s done in %.1f s: train loss %.4f, test accuracy %s, rejected %s",
            server_round, time.time() - self.t_round, metrics.get("train_loss") or float("nan"),
            test.get("accuracy"), metrics.get("rejected"))
        self.write_node_csv()
        return None, MetricRecord({"rejected": int(metrics.get("rejected") or 0)})

    def configure_evaluate(self, server_round, arrays, config, grid):
        return []  # the server evaluates on its evaluation set (Rust), as the in-process run

    def aggregate_evaluate(self, server_round, replies):
        return None

    # ------------------------------------------------------------------ per-iteration
    def run_iteration_round(self, server_round: int, grid: Grid) -> None:
        """One per-iteration round: a message exchange per step."""
        self.t_round = time.time()
        nodes = self.wait_nodes(grid)
        self.learn_shards(grid, nodes)
        plan = json.loads(self.server.plan())
        self.round_plan = plan
        self.by_node = self.group_clients(plan, nodes)
        steps = self.server.begin_iteration(self.wall_offset)
        if steps == 0:
            log(WARNING, "round %s: too few clients, the round failed", server_round)
            self.write_node_csv()
            return
        changed: list[str] = []
        for step in range(steps):
            self.sent = {}
            msgs = []
            for node, clients in sorted(self.by_node.items()):
                if step > 0 and self.synced.get(node) == (plan["round"], step - 1):
                    # the node holds step-1's global: only what step-1 changed
                    content = RecordDict({
                        "arrays": to_record(self.server.arrays(changed)),
                        "config": self._config(plan, server_round, clients, step),
                    })
                else:
                    content = self._full_content(plan, server_round, clients, step,
                                                 self.server.arrays())
                    content["config"]["full"] = True
                msgs.append(self._message(node, content, server_round))
            replies = grid.send_and_receive(msgs, timeout=self.round_timeout)
            uploads, dropped = [], []
            for msg in self._replies_by_node(server_round, step, replies):
                node = msg.metadata.src_node_id
                try:
                    per_client = split_client_keys(from_record(msg.content["arrays"]))
                    metrics = msg.content["metrics"]
                    for c in self.by_node[node]:
                        if f"n-examples.{c}" not in metrics:
                            continue  # no data: nothing to upload
                        got = per_client.get(c, {})
                        jvp = got.pop("jvp", np.zeros(0, np.float32))
                        exact = {k.removeprefix("exact/"): v for k, v in got.items()}
                        if jvp.dtype != np.float32 or any(v.dtype != np.float32
                                                          for v in exact.values()):
                            raise ValueError(f"client {c}: arrays are not float32")
                        uploads.append((c, int(metrics[f"n-examples.{c}"]),
                                        float(metrics[f"loss.{c}"]), jvp, exact))
                    self.synced[node] = (plan["round"], step)
                    self._node_row(server_round, step, node, msg, "ok")
                except (KeyError, ValueError, TypeError) as e:
                    log(WARNING, "round %s step %s: malformed reply from node %s, dropped: %s",
                        server_round, step, node, e)
                    self._node_row(server_round, step, node, msg, f"malformed: {e}")
                    uploads = [u for u in uploads if u[0] not in self.by_node[node]]
                    dropped += [(c, f"malformed reply: {e}") for c in self.by_node[node]]
            out = json.loads(self.server.iteration_step(uploads, dropped))
            for client, reason in out["rejected"]:
                log(WARNING, "round %s step %s: reply of client %s rejected: %s", server_round,
                    step, client, reason)
            changed = out["changed"]
        metrics = json.loads(self.server.close_iteration(self.wall_offset))
        self._log_round(server_round, metrics, [], metrics.get("failed"))

    # ------------------------------------------------------------------ the run
    def run(self, grid: Grid) -> dict:
        """Every remaining round, then the run's files; returns summary.json's content."""
        self.summary()
        self.wall_offset = self.server.wall_offset
        while self.server.round < self.server.rounds:
            server_round = self.server.round + 1
            log(INFO, "[ROUND %s/%s]", server_round, self.server.rounds)
            if self.server.comm == "per-iteration":
                self.run_iteration_round(server_round, grid)
            else:
                msgs = list(self.configure_train(server_round, ArrayRecord(), ConfigRecord(),
                                                 grid))
                replies = grid.send_and_receive(msgs, timeout=self.round_timeout) if msgs else []
                self.aggregate_train(server_round, replies)
            budget = float(self.settings.get("time_budget_s") or 0.0)
            last = self.server.round
            if budget > 0 and self._last_wall() >= budget and last < self.server.rounds:
                log(INFO, "time budget of %.0f s reached after round %s", budget, last)
                break
        summary = json.loads(self.server.finish())
        log(INFO, "final accuracy %s (before %s), files in %s",
            summary.get("final_test_accuracy"), summary.get("test_accuracy_before"),
            self.out_dir)
        return summary

    def _last_wall(self) -> float:
        path = os.path.join(self.out_dir or ".", "metrics.csv")
        try:
            with open(path) as f:
                rows = list(csv.DictReader(f))
            return float(rows[-1]["wall_s"]) if rows else 0.0
        except OSError:
            return 0.0

    def write_node_csv(self) -> None:
        """flower_nodes.csv: per round (and step) and node, the payload bytes each way, the
        node's peak RSS and time."""
        if not self.out_dir:
            return
        path = os.path.join(self.out_dir, "flower_nodes.csv")
        with open(path, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(NODE_CSV_HEADER)
            w.writerows(self.node_rows)
