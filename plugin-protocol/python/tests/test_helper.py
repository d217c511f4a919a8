"""The hutch_plugin helper against a real hutchd, inside the real sandbox.

Each test installs a plugin written with the helper (main.py below, running
on /usr/bin/python3 with the vendored grpcio) into a fresh daemon and drives
it with hutchctl: the plugin's observations come back as task results.
"""

from __future__ import annotations

import hashlib
import json
import os
import time

from conftest import Hutchd

PLUGIN_ID = "org.hutch.test.pyhelper"

MANIFEST = f"""id = "{PLUGIN_ID}"
version = "1.0.0"
scopes = ["data:read", "data:write"]

[[actions]]
name = "hello"
description = "the welcome and a version mismatch"

[[actions]]
name = "report"
description = "progress, log, outputs"

[[actions]]
name = "copy"
description = "chunked read and write"

[[actions]]
name = "write"
description = "write one object (denied without data:write)"

[[actions]]
name = "badsource"
description = "a content source that fails half-way"

[[actions]]
name = "spin"
description = "progress until cancelled"
"""

MAIN = r'''
import hashlib, os, sys, time
sys.path.insert(0, "/plugin/vendor")
import hutch_plugin
from hutch_plugin import Task

plugin = hutch_plugin.Plugin(client="pytest-probe")

@plugin.action("hello")
def hello(task: Task):
    w = task.welcome
    try:
        ch = hutch_plugin.connect()
        hutch_plugin.Session.open(ch, ["hello"], protocol_version=99)
        mismatch = "no error"
    except hutch_plugin.ProtocolError as e:
        mismatch = str(e)
    return {"plugin_id": w.plugin_id, "plugin_version": w.plugin_version,
            "instance_id": w.instance_id, "env_instance": os.environ.get("HUTCH_INSTANCE"),
            "scopes": list(w.granted_scopes), "acting_user": task.acting_user,
            "mismatch": mismatch}

@plugin.action("report")
def report(task: Task):
    task.log("starting report", level="info")
    task.progress(25, "a quarter")
    task.log("a warning", level="warn")
    task.progress(75, "three quarters")
    task.output("answer", value={"n": 42})
    return {"args": task.args}

@plugin.action("copy")
def copy(task: Task):
    src = task.inputs[0]
    reader = task.read_object(src)
    sizes = []
    h = hashlib.sha256()
    def chunks():
        for c in reader:
            sizes.append(len(c))
            h.update(c)
            # re-cut into odd sizes: write_object re-chunks them
            for i in range(0, len(c), 300_000):
                yield c[i:i + 300_000]
    info = task.write_object(src.dataset_id, src.key + ".copy", chunks(),
                             metadata={"source": src.key})
    task.output("copy", object=info)
    return {"read_chunks": len(sizes), "max_chunk": max(sizes), "size": sum(sizes),
            "sha256": h.hexdigest(), "written_size": info.size, "written_sha256": info.sha256,
            "info_version": reader.info.version, "max_allowed": hutch_plugin.MAX_CHUNK_SIZE}

@plugin.action("write")
def write(task: Task):
    try:
        task.write_object(task.args["dataset"], "denied.bin", b"x" * 10)
    except hutch_plugin.PermissionDenied as e:
        if task.args.get("reraise"):
            raise
        return {"type": type(e).__name__, "message": str(e), "reason": e.reason,
                "op": e.op, "is_hutch_error": isinstance(e, hutch_plugin.HutchError)}
    return {"type": "none"}

@plugin.action("badsource")
def badsource(task: Task):
    def content():
        yield b"x" * 2_500_000
        raise hutch_plugin.TaskFailed("source broke after 2.5 MB")
    task.write_object(task.args["dataset"], "partial.bin", content())

@plugin.action("spin")
def spin(task: Task):
    i = 0
    try:
        while True:
            task.check_cancelled()
            i += 1
            task.progress(min(99, i), f"step {i}")
            time.sleep(0.05)
    finally:
        print(f"spin saw cancel={task.cancelled} reason={task.cancel_reason!r}", file=sys.stderr, flush=True)

plugin.run()
'''


def install_probe(d: Hutchd, *grant: str) -> None:
    d.install(d.plugin("pyhelper", MAIN, MANIFEST), *grant)


def result(t: dict) -> dict:
    assert t["task"]["state"] == "completed", t
    return json.loads(t["task"]["result_json"])


def test_handshake_welcome_and_version_mismatch(hutchd: Hutchd) -> None:
    install_probe(hutchd)
    r = result(hutchd.task(PLUGIN_ID, "hello", {}))
    assert r["plugin_id"] == PLUGIN_ID
    assert r["plugin_version"] == "1.0.0"
    assert r["instance_id"] and r["instance_id"] == r["env_instance"]
    assert sorted(r["scopes"]) == ["data:read", "data:write"]
    assert r["acting_user"] == "root"
    assert r["mismatch"] == "agent hello: protocol version mismatch: plugin speaks 99, hutch speaks 1", r


def test_task_progress_log_outputs(hutchd: Hutchd) -> None:
    install_probe(hutchd)
    t = hutchd.task(PLUGIN_ID, "report", {"x": [1, 2]})
    assert result(t) == {"args": {"x": [1, 2]}}
    assert t["task"]["progress_percent"] >= 75
    lines = [(entry["level"], entry["line"]) for entry in t["log"]]
    assert ("info", "starting report") in lines and ("warn", "a warning") in lines, lines
    outs = {o["name"]: o for o in t["outputs"]}
    assert json.loads(outs["answer"]["value_json"]) == {"n": 42}
    # the human view prints the same
    r = hutchd.ctl("task", "run", PLUGIN_ID, "report").ok()
    assert "three quarters" in r.stderr + r.stdout, r


def test_chunked_read_and_write_of_a_multi_mib_object(hutchd: Hutchd) -> None:
    install_probe(hutchd)
    content = os.urandom(5 * 1024 * 1024 + 12345)
    src = hutchd.root / "big.bin"
    src.write_bytes(content)
    hutchd.ctl("dataset", "create", "Big", "--id", "ds1").ok()
    hutchd.ctl("dataset", "put", "ds1", "big.bin", str(src)).ok()
    t = hutchd.task(PLUGIN_ID, "copy", {}, "ds1/big.bin")
    r = result(t)
    digest = hashlib.sha256(content).hexdigest()
    assert r["size"] == len(content) and r["sha256"] == digest
    assert r["read_chunks"] >= 6, "content arrives in chunks"
    assert r["max_chunk"] <= r["max_allowed"] == 1024 * 1024
    assert r["written_size"] == len(content) and r["written_sha256"] == digest
    assert r["info_version"] == 1
    out = hutchd.root / "copy.bin"
    hutchd.ctl("dataset", "get", "ds1", "big.bin.copy", "-o", str(out)).ok()
    assert out.read_bytes() == content
    puts = [e for e in t["audit"] if e["operation"] == "data.object.put"]
    assert puts and puts[0]["actor_user"] == "root", "the write carried the task id: it acted as the submitter"


def test_denied_call_is_a_readable_exception(hutchd: Hutchd) -> None:
    install_probe(hutchd, "data:read")  # data:write requested but not granted
    hutchd.ctl("dataset", "create", "D", "--id", "ds1").ok()
    r = result(hutchd.task(PLUGIN_ID, "write", {"dataset": "ds1"}))
    assert r["type"] == "PermissionDenied" and r["is_hutch_error"], r
    assert r["op"] == "put object ds1/denied.bin"
    assert "data:write" in r["reason"] and "not granted" in r["reason"], r
    assert r["message"] == f"put object ds1/denied.bin: permission denied: {r['reason']}"
    # uncaught, it fails the task with the same message
    t = hutchd.task(PLUGIN_ID, "write", {"dataset": "ds1", "reraise": True})
    assert t["task"]["state"] == "failed", t
    assert t["task"]["error"] == r["message"], t
    denied = hutchd.ctl("--json", "audit", "query", "--decision", "denied").ok().json()
    assert any(e["operation"] == "data.object.put" for e in denied["events"]), denied


def test_failing_content_source_stores_nothing(hutchd: Hutchd) -> None:
    install_probe(hutchd)
    hutchd.ctl("dataset", "create", "D", "--id", "ds1").ok()
    t = hutchd.task(PLUGIN_ID, "badsource", {"dataset": "ds1"})
    assert t["task"]["state"] == "failed" and t["task"]["error"] == "source broke after 2.5 MB", t
    objs = hutchd.ctl("--json", "dataset", "objects", "ds1").ok().json()
    assert objs.get("objects", []) == [], objs


def test_cancel_stops_the_handler_and_reports_cancelled(hutchd: Hutchd) -> None:
    install_probe(hutchd)
    tid = hutchd.ctl("--json", "task", "run", PLUGIN_ID, "spin", "--detach").ok().json()["id"]
    hutchd.wait_task(tid, lambda t: t["task"]["state"] == "running" and t["task"]["progress_percent"] > 2)
    hutchd.ctl("task", "cancel", tid, "--reason", "pytest").ok()
    t = hutchd.wait_task(tid, lambda t: t["task"]["state"] not in ("queued", "running"), timeout=30)
    assert t["task"]["state"] == "cancelled", t
    # the handler saw the flag and ended; the plugin lives on and serves tasks
    deadline = time.monotonic() + 20
    while "spin saw cancel=True reason='cancelled by root'" not in hutchd.ctl("plugin", "logs", PLUGIN_ID).stdout:
        assert time.monotonic() < deadline, hutchd.ctl("plugin", "logs", PLUGIN_ID)
        time.sleep(0.1)
    assert result(hutchd.task(PLUGIN_ID, "report", {}))["args"] == {}
    status = hutchd.ctl("--json", "plugin", "status", PLUGIN_ID).ok().json()
    assert status["restarts"] == 0 and status["state"] == "running", status


def test_heartbeats_in_the_background(hutchd: Hutchd) -> None:
    install_probe(hutchd)
    hutchd.task(PLUGIN_ID, "report", {})  # the plugin is up and said hello
    deadline = time.monotonic() + 20
    while True:
        status = hutchd.ctl("--json", "plugin", "status", PLUGIN_ID).ok().json()
        if status.get("last_heartbeat_unix_ms", 0) > status["started_unix_ms"]:
            break
        assert time.monotonic() < deadline, f"no heartbeat within 20 s: {status}"
        time.sleep(0.5)
