"""ClientApp: the Rust client step on the node's own clients.

The node config names the shard (``--node-config "partition-id=i num-partitions=N"``): the node
trains only the logical clients ``c`` with ``c % N == i`` and refuses others. Every message runs
in a fresh process (Flower's subprocess isolation), which loads the experiment named by the run
config's ``spry-config`` (the same file the server and the in-process run read).
"""

from __future__ import annotations

import os
import time
from logging import INFO

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.logger import log

from .codec import from_record, to_record

app = ClientApp()

_STATE_KEY = "spry-global"  # per-iteration: the node's copy of the global tensors


def shard(context: Context) -> tuple[int, int]:
    """(partition-id, num-partitions) from the node config (default: 0 of 1)."""
    cfg = context.node_config
    return int(cfg.get("partition-id", 0)), int(cfg.get("num-partitions", 1))


def experiment(context: Context):
    from spry_flwr_native import Experiment

    rc = context.run_config
    config = str(rc.get("spry-config", "")) or None
    overrides = str(rc.get("spry-overrides", "")) or None
    return Experiment(config, overrides)


def _fault(context: Context) -> str:
    """Fault injection for tests: run config ``fault`` = "<partition>:<kind>" (nan|shape|float64)."""
    spec = str(context.run_config.get("fault", ""))
    if ":" not in spec:
        return ""
    part, kind = spec.split(":", 1)
    return kind if int(part) == shard(context)[0] else ""


def _corrupt(out: dict[str, np.ndarray], kind: str) -> None:
    key = sorted(out)[0]
    if kind == "nan":
        a = out[key].copy()
        a.flat[0] = np.nan
        out[key] = a
    elif kind == "shape":
        out[key] = np.zeros((3, 3), np.float32)
    elif kind == "float64":
        out[key] = out[key].astype(np.float64)


@app.query()
def query(msg: Message, context: Context) -> Message:
    """Tells the server which shard this node holds."""
    pid, n = shard(context)
    return Message(RecordDict({"metrics": MetricRecord({"partition-id": pid,
                                                        "num-partitions": n})}), reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    t0 = time.time()
    cfg: ConfigRecord = msg.content["config"]
    pid, n_parts = shard(context)
    clients = [int(c) for c in cfg["clients"]]
    foreign = [c for c in clients if c % n_parts != pid]
    if foreign:
        raise ValueError(f"clients {foreign} are not in shard {pid} of {n_parts}")
    exp = experiment(context)
    if cfg["mode"] != exp.comm:
        raise ValueError(f"the server runs {cfg['mode']}, this node's config says {exp.comm}")
    sent = from_record(msg.content["arrays"])
    if "context" in msg.content:
        sent.update(from_record(msg.content["context"]))
    round_, step = int(cfg["round"]), int(cfg["step"])
    out: dict[str, np.ndarray] = {}
    metrics: dict[str, float | int] = {}
    if cfg["mode"] == "per-iteration":
        if step > 0 and "full" not in cfg:
            # only what the last step changed: apply it to the node's copy
            held = from_record(context.state[_STATE_KEY])
            held.update(sent)
            sent = held
        context.state[_STATE_KEY] = to_record(sent)
    fault = _fault(context)
    for c in clients:
        assigned = list(cfg[f"assigned.{c}"])
        if cfg["mode"] == "per-iteration":
            r = exp.client_jvp(round_, step, c, assigned, sent)
            if r is None:
                continue
            out[f"{c}/jvp"] = r["jvp"]
            for name, g in r["exact"].items():
                out[f"{c}/exact/{name}"] = g
        else:
            r = exp.client_train(round_, c, assigned, sent)
            for name, a in r["arrays"].items():
                out[f"{c}/{name}"] = a
            metrics[f"skipped.{c}"] = int(r["skipped"])
        metrics[f"n-examples.{c}"] = int(r["n_examples"])
        metrics[f"loss.{c}"] = float(r["loss"])
    if fault and out:
        _corrupt(out, fault)
    from spry_flwr_native import peak_rss_mib

    metrics["peak-rss-mib"] = float(peak_rss_mib() or 0.0)
    metrics["seconds"] = time.time() - t0
    log(INFO, "node %s (shard %s/%s) round %s step %s: clients %s, %.1f s, peak RSS %.0f MiB%s",
        context.node_id, pid, n_parts, round_, step, clients, metrics["seconds"],
        metrics["peak-rss-mib"], f", fault {fault}" if fault else "")
    content = RecordDict({
        "arrays": ArrayRecord({k: v for k, v in to_record(out).items()})
        if fault != "float64" else _raw_record(out),
        "metrics": MetricRecord(metrics),
        "config": ConfigRecord({"round": round_, "step": step, "pid": os.getpid()}),
    })
    return Message(content, reply_to=msg)


def _raw_record(out: dict[str, np.ndarray]) -> ArrayRecord:
    from flwr.app import Array

    return ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in out.items()})
