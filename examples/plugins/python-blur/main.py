"""Hutch example plugin: blur and threshold of 8-bit PGM images with numpy.

Implements /work/IMAGE_CONTRACT.md (the same job as examples/plugins/rust-blur):

* ``blur`` ``{"passes": N}`` (1..=16, default 1): N times the 3x3 binomial
  kernel [[1,2,1],[2,4,2],[1,2,1]] with clamped edges,
  ``out = (sum + 8) >> 4`` in integers.
* ``threshold`` ``{"level": L}`` (0..=255, default 128): 255 if in >= L else 0.

Each input ``DATASET/KEY`` is read in chunks, processed, and written to
``DATASET/<KEY without .pgm>.<action>.pgm`` in chunks, with metadata linking
it to its input, and yielded as a task output. Progress is reported per block
of rows (at least every 10 %), cancel is checked per block.
"""

from __future__ import annotations

import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "vendor"))

from hutch_plugin.imports import explain_imports  # noqa: E402

with explain_imports():
    import numpy as np

    import hutch_plugin
    from hutch_plugin import Task, TaskFailed

plugin = hutch_plugin.Plugin(client="python-blur 1.0.0")

#: Rows per block: progress and cancel checks happen per block.
BLOCKS = 20


def compact(value: object) -> str:
    """JSON without spaces (as serde_json writes it, so both example plugins agree)."""
    return json.dumps(value, separators=(",", ":"))


def parse_pgm(data: bytes, name: str) -> "np.ndarray":
    """Parses a binary P5 PGM with maxval 255 (``#`` comments allowed in the header)."""
    bad = TaskFailed(f"input {name}: not a P5 PGM with maxval 255")
    fields: list[bytes] = []
    i = 0
    n = len(data)
    while len(fields) < 4:
        while i < n and data[i : i + 1].isspace():
            i += 1
        if i < n and data[i : i + 1] == b"#":
            while i < n and data[i : i + 1] not in (b"\n", b"\r"):
                i += 1
            continue
        start = i
        while i < n and not data[i : i + 1].isspace() and data[i : i + 1] != b"#":
            i += 1
        if start == i:
            raise bad
        fields.append(data[start:i])
    # exactly one whitespace byte separates maxval from the pixels
    if i >= n or not data[i : i + 1].isspace():
        raise bad
    i += 1
    magic, w, h, maxval = fields
    if magic != b"P5" or not (w.isdigit() and h.isdigit() and maxval.isdigit()):
        raise bad
    width, height = int(w), int(h)
    if int(maxval) != 255 or width == 0 or height == 0 or n - i != width * height:
        raise bad
    return np.frombuffer(data, dtype=np.uint8, count=width * height, offset=i).reshape(height, width)


def pgm_chunks(img: "np.ndarray"):
    """The PGM file of ``img``: header, then rows in blocks of about 1 MiB."""
    height, width = img.shape
    yield f"P5\n{width} {height}\n255\n".encode()
    rows = max(1, hutch_plugin.MAX_CHUNK_SIZE // max(1, width))
    for y in range(0, height, rows):
        yield img[y : y + rows].tobytes()


def parse_args(task: Task, allowed: dict) -> dict:
    """``task.args`` checked against ``{name: (default, lo, hi)}``."""
    if not isinstance(task.args, dict):
        raise TaskFailed(f"{task.action}: args must be a JSON object")
    out = {}
    for key in task.args:
        if key not in allowed:
            raise TaskFailed(f"{task.action}: unknown argument {key!r} (allowed: {', '.join(allowed)})")
    for key, (default, lo, hi) in allowed.items():
        v = task.args.get(key, default)
        if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
            raise TaskFailed(f"{task.action}: {key} must be an integer in {lo}..={hi}, got {json.dumps(v)}")
        out[key] = v
    return out


def blur_pass(img: "np.ndarray", task: Task, done: float, share: float) -> "np.ndarray":
    """One pass of the binomial kernel, exact integer arithmetic, by blocks of rows."""
    height, width = img.shape
    p = np.pad(img.astype(np.uint32), 1, mode="edge")
    # horizontal [1, 2, 1] on every padded row
    hsum = p[:, :-2] + 2 * p[:, 1:-1] + p[:, 2:]
    out = np.empty((height, width), dtype=np.uint8)
    step = max(1, -(-height // BLOCKS))
    for y0 in range(0, height, step):
        task.check_cancelled()
        y1 = min(height, y0 + step)
        # vertical [1, 2, 1]: padded rows y..y+2 around image row y
        v = hsum[y0:y1] + 2 * hsum[y0 + 1 : y1 + 1] + hsum[y0 + 2 : y1 + 2]
        out[y0:y1] = (v + 8) >> 4
        task.progress(done + share * y1 / height, f"blur rows {y1}/{height}")
    return out


def threshold_rows(img: "np.ndarray", level: int, task: Task, done: float, share: float) -> "np.ndarray":
    """255 where ``img >= level``, else 0, by blocks of rows."""
    height = img.shape[0]
    out = np.empty_like(img)
    step = max(1, -(-height // BLOCKS))
    for y0 in range(0, height, step):
        task.check_cancelled()
        y1 = min(height, y0 + step)
        out[y0:y1] = np.where(img[y0:y1] >= level, 255, 0).astype(np.uint8)
        task.progress(done + share * y1 / height, f"threshold rows {y1}/{height}")
    return out


def run(task: Task, args: dict) -> dict:
    """Applies ``task.action`` to every input and writes the results."""
    if not task.inputs:
        raise TaskFailed(f"{task.action}: no input objects (pass --input DATASET/KEY)")
    task.log(f"{task.action} {compact(args)} on {len(task.inputs)} input(s)")
    outputs: list[str] = []
    pixels = 0
    share = 100.0 / len(task.inputs)
    for n, ref in enumerate(task.inputs):
        name = f"{ref.dataset_id}/{ref.key}"
        reader = task.read_object(ref)
        data = bytearray()
        for chunk in reader:
            data += chunk
        img = parse_pgm(bytes(data), ref.key)
        done = n * share
        if task.action == "blur":
            passes = args["passes"]
            for k in range(passes):
                img = blur_pass(img, task, done + share * 0.9 * k / passes, share * 0.9 / passes)
        else:
            img = threshold_rows(img, args["level"], task, done, share * 0.9)
        base = ref.key[: -len(".pgm")] if ref.key.endswith(".pgm") else ref.key
        key = f"{base}.{task.action}.pgm"
        meta = {
            "source": name,
            "source_version": reader.info.version,
            "action": task.action,
            "args": args,
        }
        # metadata values are strings: JSON (compact) unless already a string
        metadata = {k: v if isinstance(v, str) else compact(v) for k, v in meta.items()}
        info = task.write_object(ref.dataset_id, key, pgm_chunks(img), metadata=metadata)
        task.output(key, value=meta, object=info)
        outputs.append(key)
        pixels += int(img.size)
        task.progress(done + share, f"wrote {ref.dataset_id}/{key}")
    task.log(f"{task.action} done: {len(outputs)} output(s), {pixels} pixels")
    return {"outputs": outputs, "pixels": pixels}


@plugin.action("blur")
def blur(task: Task) -> dict:
    """3x3 binomial blur, ``{"passes": 1..16}``."""
    return run(task, parse_args(task, {"passes": (1, 1, 16)}))


@plugin.action("threshold")
def threshold(task: Task) -> dict:
    """Binary threshold, ``{"level": 0..255}``."""
    return run(task, parse_args(task, {"level": (128, 0, 255)}))


if __name__ == "__main__":
    try:
        plugin.run()
    except hutch_plugin.HutchError as e:
        print(f"python-blur: {e}", file=sys.stderr)
        sys.exit(1)
