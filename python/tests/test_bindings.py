"""The bindings on a tiny random-init model: API, errors, and the Flower message flow (fake Grid)
ending bit-identical to the in-process run."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

import spry_flwr_native as native
from tiny import write_experiment


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return write_experiment(tmp_path_factory.mktemp("tiny"))


def adapter(dir: Path) -> dict[str, np.ndarray]:
    """The tensors of an adapter folder (safetensors, read without the package)."""
    import struct

    raw = (dir / "adapter_model.safetensors").read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    out = {}
    for k, v in header.items():
        if k == "__metadata__":
            continue
        a, b = v["data_offsets"]
        out[k] = np.frombuffer(raw[8 + n + a:8 + n + b], "<f4").reshape(v["shape"])
    return out


def rows(path: Path) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))


def test_errors_keep_the_core_message(tiny):
    with pytest.raises(native.SpryError, match="unknown field `nope`"):
        native.read_settings(str(tiny), '{"nope": 1}')
    exp = native.Experiment(str(tiny))
    with pytest.raises(native.SpryError, match="unknown tensor `x`"):
        exp.client_train(0, 0, ["x"], exp.initial_arrays())
    arrays = exp.initial_arrays()
    name = exp.names[0]
    arrays[name] = np.zeros((3, 3), np.float32)
    with pytest.raises(native.SpryError, match="shape"):
        exp.client_train(0, 0, [name], arrays)
    with pytest.raises(TypeError):  # float64 is refused, not converted
        arrays[name] = np.zeros(exp.shapes[name], np.float64)
        exp.client_train(0, 0, [name], arrays)


def test_client_step_returns_the_assigned_tensors(tiny):
    exp = native.Experiment(str(tiny))
    assert exp.n_clients == 3 and exp.comm == "per-epoch"
    assert exp.shard_clients(1, 3) == [1]
    unit = exp.units[0]
    r = exp.client_train(0, 1, unit, exp.initial_arrays())
    assert sorted(r["arrays"]) == sorted(unit)
    assert all(a.dtype == np.float32 and a.flags.c_contiguous for a in r["arrays"].values())
    assert r["n_examples"] > 0 and np.isfinite(r["loss"])


def test_fake_grid_run_equals_the_in_process_run(tiny, tmp_path):
    import harness

    native.run_in_process(str(tmp_path / "inproc"), str(tiny))
    harness.run(str(tiny), str(tmp_path / "flower"), n_nodes=3)
    a, b = adapter(tmp_path / "inproc" / "adapter"), adapter(tmp_path / "flower" / "adapter")
    assert a.keys() == b.keys()
    for k in a:
        assert np.array_equal(a[k], b[k]), k
    ra, rb = rows(tmp_path / "inproc" / "metrics.csv"), rows(tmp_path / "flower" / "metrics.csv")
    assert [r["test_accuracy"] for r in ra] == [r["test_accuracy"] for r in rb]
    assert [r["bytes_up"] for r in ra] == [r["bytes_up"] for r in rb]
    for f in ("config.json", "summary.json", "metrics.csv", "flower_nodes.csv"):
        assert (tmp_path / "flower" / f).is_file(), f
    s = json.loads((tmp_path / "flower" / "summary.json").read_text())
    assert s["rounds"] == 3


@pytest.mark.parametrize("kind", ["nan", "shape", "float64"])
def test_a_bad_reply_is_dropped_and_the_others_kept(tiny, tmp_path, kind, caplog):
    import harness

    harness.run(str(tiny), str(tmp_path / "bad"), n_nodes=3, run_config_extra={"fault": f"1:{kind}"})
    harness.run(str(tiny), str(tmp_path / "silent"), n_nodes=3, silent=(1,))
    r = rows(tmp_path / "bad" / "metrics.csv")
    assert len(r) == 3 and all(x["rejected"] == "1" for x in r)
    assert any("rejected" in m or "malformed" in m for m in caplog.messages)
    # dropping node 1's reply leaves exactly what node 1's silence leaves
    a, b = adapter(tmp_path / "bad" / "adapter"), adapter(tmp_path / "silent" / "adapter")
    for k in a:
        assert np.array_equal(a[k], b[k]), k
    # and the others' work is in it
    exp = native.Experiment(str(tiny))
    exp.save_adapter(str(tmp_path / "init"), exp.initial_arrays())
    init = adapter(tmp_path / "init")
    assert any(not np.array_equal(a[k], init[k]) for k in a)


def test_per_iteration_fake_grid_equals_in_process(tmp_path):
    import harness

    cfg = write_experiment(tmp_path / "exp", rounds=2, comm="per-iteration")
    native.run_in_process(str(tmp_path / "inproc"), str(cfg))
    harness.run(str(cfg), str(tmp_path / "flower"), n_nodes=3)
    a, b = adapter(tmp_path / "inproc" / "adapter"), adapter(tmp_path / "flower" / "adapter")
    for k in a:
        assert np.array_equal(a[k], b[k]), k
