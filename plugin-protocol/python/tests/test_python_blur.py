"""examples/plugins/python-blur through a real hutchd, against an independent
reference (IMAGE_CONTRACT: 3x3 binomial blur with clamped edges, threshold).

The reference below indexes clamped neighbours directly (no padding, no
separable sums), so it shares no code path with the plugin.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from typing import List, Union

from conftest import REPO, Hutchd

PLUGIN_ID = "org.hutch.examples.python-blur"
K = [[1, 2, 1], [2, 4, 2], [1, 2, 1]]


def ref_blur(px: List[int], w: int, h: int, passes: int) -> List[int]:
    for _ in range(passes):
        out = [0] * (w * h)
        for y in range(h):
            for x in range(w):
                s = 0
                for dy in (-1, 0, 1):
                    yy = min(max(y + dy, 0), h - 1)
                    for dx in (-1, 0, 1):
                        xx = min(max(x + dx, 0), w - 1)
                        s += K[dy + 1][dx + 1] * px[yy * w + xx]
                out[y * w + x] = (s + 8) >> 4
        px = out
    return px


def pgm(w: int, h: int, px: Union[List[int], bytes], header: bytes = b"") -> bytes:
    return (header or f"P5\n{w} {h}\n255\n".encode()) + bytes(px)


def install(d: Hutchd) -> None:
    src = REPO / "examples" / "plugins" / "python-blur"
    dst = d.root / "python-blur"
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("vendor", "__pycache__"))
    shutil.copytree(d.kit, dst / "vendor", copy_function=os.link)
    d.install(dst)
    d.ctl("dataset", "create", "Images", "--id", "img").ok()


def put(d: Hutchd, key: str, content: bytes) -> None:
    f = d.root / key.replace("/", "_")
    f.write_bytes(content)
    d.ctl("dataset", "put", "img", key, str(f)).ok()


def get(d: Hutchd, key: str) -> bytes:
    f = d.root / ("out_" + key.replace("/", "_"))
    d.ctl("dataset", "get", "img", key, "-o", str(f)).ok()
    return f.read_bytes()


def test_blur_and_threshold_match_the_reference(hutchd: Hutchd) -> None:
    install(hutchd)
    rng = random.Random(6)
    cases = {
        "one.pgm": (1, 1),
        "row.pgm": (7, 1),
        "col.pgm": (1, 5),
        "small.pgm": (33, 17),
        "noise.pgm": (120, 90),
    }
    images = {}
    for key, (w, h) in cases.items():
        px = [rng.randrange(256) for _ in range(w * h)]
        images[key] = (w, h, px)
        header = b"P5\n# a comment\n%d %d\n# another\n255\n" % (w, h) if key == "small.pgm" else b""
        put(hutchd, f"raw/{key}", pgm(w, h, px, header))
    inputs = [f"img/raw/{k}" for k in cases]
    for passes in (1, 3, 16):
        t = hutchd.task(PLUGIN_ID, "blur", {"passes": passes}, *inputs)
        assert t["task"]["state"] == "completed", t
        result = json.loads(t["task"]["result_json"])
        assert result["outputs"] == [f"raw/{k[:-4]}.blur.pgm" for k in cases]
        assert result["pixels"] == sum(w * h for w, h in cases.values())
        last_blur = t
        for key, (w, h, px) in images.items():
            out = get(hutchd, f"raw/{key[:-4]}.blur.pgm")
            assert out == pgm(w, h, ref_blur(px, w, h, passes)), (key, passes)
    for level in (0, 128, 255):
        t = hutchd.task(PLUGIN_ID, "threshold", {"level": level}, *inputs)
        assert t["task"]["state"] == "completed", t
        for key, (w, h, px) in images.items():
            out = get(hutchd, f"raw/{key[:-4]}.threshold.pgm")
            assert out == pgm(w, h, [255 if p >= level else 0 for p in px]), (key, level)
    # each output links to its input (the same JSON as its object metadata)
    outs = {o["name"]: o for o in last_blur["outputs"]}
    assert json.loads(outs["raw/noise.blur.pgm"]["value_json"]) == {
        "source": "img/raw/noise.pgm",
        "source_version": 1,
        "action": "blur",
        "args": {"passes": 16},
    }, outs
    assert outs["raw/noise.blur.pgm"]["object"]["key"] == "raw/noise.blur.pgm"


def test_bad_inputs_and_args_fail_with_clear_messages(hutchd: Hutchd) -> None:
    install(hutchd)
    put(hutchd, "raw/bad.pgm", b"P2\n2 2\n255\n1 2 3 4\n")
    put(hutchd, "raw/short.pgm", b"P5\n4 4\n255\n" + bytes(10))
    put(hutchd, "raw/deep.pgm", b"P5\n1 1\n65535\n" + bytes(2))
    put(hutchd, "raw/ok.pgm", pgm(2, 2, [1, 2, 3, 4]))
    for key in ("bad", "short", "deep"):
        t = hutchd.task(PLUGIN_ID, "blur", {}, f"img/raw/{key}.pgm")
        assert t["task"]["state"] == "failed", t
        assert t["task"]["error"] == f"input raw/{key}.pgm: not a P5 PGM with maxval 255", t
    t = hutchd.task(PLUGIN_ID, "blur", {"passes": 2, "sigma": 1}, "img/raw/ok.pgm")
    assert t["task"]["state"] == "failed" and "'sigma'" in t["task"]["error"], t
    for bad in (0, 17, "3", True):
        t = hutchd.task(PLUGIN_ID, "blur", {"passes": bad}, "img/raw/ok.pgm")
        assert t["task"]["state"] == "failed" and "passes must be an integer in 1..=16" in t["task"]["error"], t
    t = hutchd.task(PLUGIN_ID, "threshold", {"level": 256}, "img/raw/ok.pgm")
    assert t["task"]["state"] == "failed" and "level must be an integer in 0..=255" in t["task"]["error"], t


def test_cancel_of_a_long_blur(hutchd: Hutchd) -> None:
    install(hutchd)
    w, h = 2000, 2000
    put(hutchd, "raw/big.pgm", pgm(w, h, os.urandom(w * h)))
    tid = hutchd.ctl("--json", "task", "run", PLUGIN_ID, "blur", "--args", '{"passes": 16}',
                     "--input", "img/raw/big.pgm", "--detach").ok().json()["id"]
    hutchd.wait_task(tid, lambda t: t["task"]["state"] == "running" and t["task"]["progress_percent"] > 0)
    hutchd.ctl("task", "cancel", tid).ok()
    t = hutchd.wait_task(tid, lambda t: t["task"]["state"] not in ("queued", "running"), timeout=30)
    assert t["task"]["state"] == "cancelled", t
    keys = [o["key"] for o in hutchd.ctl("--json", "dataset", "objects", "img").ok().json()["objects"]]
    assert keys == ["raw/big.pgm"], "a cancelled blur writes nothing"
    # the plugin is still serving
    put(hutchd, "raw/ok.pgm", pgm(2, 2, [1, 2, 3, 4]))
    assert hutchd.task(PLUGIN_ID, "threshold", {}, "img/raw/ok.pgm")["task"]["state"] == "completed"

