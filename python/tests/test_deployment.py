"""A real loopback deployment: one SuperLink and 3 SuperNodes as separate processes, started and
stopped by scripts/flower_local.sh. 3 rounds of the tiny model end with the in-process run's
adapter bit for bit; a SuperNode killed mid-run does not stop it (the round closes on the
timeout, the dead node's units keep their values)."""

from __future__ import annotations

import csv
import os
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import spry_flwr_native as native
from test_bindings import adapter
from tiny import write_experiment

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "flower_local.sh"


@pytest.fixture(scope="module")
def federation(tmp_path_factory):
    state = tmp_path_factory.mktemp("flower")
    env = dict(os.environ, FLOWER_STATE=str(state), FLOWER_PORT=os.environ.get("FLOWER_PORT", "9200"))
    subprocess.run([str(SCRIPT), "start", "3"], env=env, check=True, timeout=180)
    try:
        yield env
    finally:
        subprocess.run([str(SCRIPT), "stop"], env=env, timeout=120)


def run(env, config: Path, out: Path, *extra: str, **popen) -> subprocess.CompletedProcess:
    return subprocess.run([str(SCRIPT), "run", str(config), str(out), *extra], env=env,
                          capture_output=True, text=True, timeout=600, **popen)


def test_three_supernodes_end_with_the_in_process_adapter(federation, tmp_path):
    cfg = write_experiment(tmp_path / "exp", rounds=3)
    native.run_in_process(str(tmp_path / "inproc"), str(cfg))
    r = run(federation, cfg, tmp_path / "flower", "round-timeout=120")
    assert "SPRY_SUMMARY" in r.stdout, r.stdout + r.stderr
    a, b = adapter(tmp_path / "inproc" / "adapter"), adapter(tmp_path / "flower" / "adapter")
    assert a.keys() == b.keys()
    for k in a:
        assert np.array_equal(a[k], b[k]), k
    with open(tmp_path / "flower" / "flower_nodes.csv") as f:
        nodes = list(csv.DictReader(f))
    assert len(nodes) == 9 and all(n["status"] == "ok" for n in nodes)


def test_a_node_killed_mid_run_does_not_stop_it(federation, tmp_path):
    cfg = write_experiment(tmp_path / "exp", rounds=3)
    out = tmp_path / "flower"
    # a round timeout long enough for a node's fresh ClientApp process to load the experiment on
    # a loaded 2-core machine (at 20 s, nodes missed round 1 under CI load and were never sent
    # work, so the kill went unnoticed)
    proc = subprocess.Popen([str(SCRIPT), "run", str(cfg), str(out), "round-timeout=90"],
                            env=federation, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    reader.start()
    # kill SuperNode 2 once round 1 is closed and the server knows which shard it holds
    deadline = time.time() + 400
    while time.time() < deadline:
        closed = (out / "metrics.csv").is_file() and len((out / "metrics.csv").read_text().splitlines()) >= 2
        if closed and any("holds shard 2 of 3" in line for line in lines):
            break
        time.sleep(0.5)
    else:
        pytest.fail("shard 2's node never answered before round 1 closed:\n" + "".join(lines))
    subprocess.run([str(SCRIPT), "kill-node", "2"], env=federation, check=True)
    proc.wait(timeout=900)
    reader.join(timeout=30)
    log = "".join(lines)
    assert "SPRY_SUMMARY" in log, log
    assert "no reply from node" in log, log
    with open(out / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["round"] for r in rows] == ["1", "2", "3"]
    assert all(r["test_accuracy"] for r in rows)
