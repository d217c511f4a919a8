"""pytest fixtures: a real hutchd on temp paths, driven through hutchctl.

Mirrors tests/src/daemon.rs: a config naming a temp state dir, runtime dir and
control socket, a cgroup parent and uid range unique to the run; the daemon
is stopped (SIGTERM, then SIGKILL) and everything it made is removed at the
end, also on failure. Plugins are directories with a manifest, a main.py and
a vendor/ dir built once per session by vendor.sh (grpcio, protobuf, stubs
generated from plugin.proto, hutch_plugin).

Needs root (namespaces, cgroups, mounts) and target/debug/hutchd + hutchctl
(`cargo build --workspace --bins`); HUTCH_BIN_DIR overrides the directory.
Not root: every test is skipped, unless HUTCH_REQUIRE_PRIVILEGED_TESTS=1.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
import zlib
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional

import pytest

HERE = Path(__file__).resolve().parent
PYTHON_DIR = HERE.parent
REPO = PYTHON_DIR.parent.parent
BIN_DIR = Path(os.environ.get("HUTCH_BIN_DIR", REPO / "target" / "debug"))


def pytest_collection_modifyitems(config: pytest.Config, items: List[pytest.Item]) -> None:
    """Skips everything when not root (or fails, under HUTCH_REQUIRE_PRIVILEGED_TESTS=1)."""
    if os.geteuid() == 0:
        return
    if os.environ.get("HUTCH_REQUIRE_PRIVILEGED_TESTS") == "1":
        raise pytest.UsageError("the Python helper tests need root and HUTCH_REQUIRE_PRIVILEGED_TESTS=1 is set")
    mark = pytest.mark.skip(reason="SKIP: needs root (a real hutchd uses namespaces, cgroups and mounts)")
    for item in items:
        item.add_marker(mark)


def _bin(name: str) -> Path:
    p = BIN_DIR / name
    if not p.is_file():
        pytest.fail(f"{p} not found: run `cargo build --workspace --bins` first (or set HUTCH_BIN_DIR)")
    return p


@pytest.fixture(scope="session")
def kit() -> Iterator[Path]:
    """A vendor/ dir built by vendor.sh once per session (hard-linked into plugins)."""
    root = Path(tempfile.mkdtemp(prefix="hutch-py-kit-"))
    try:
        subprocess.run([str(PYTHON_DIR / "vendor.sh"), str(root)], check=True)
        yield root / "vendor"
    finally:
        shutil.rmtree(root, ignore_errors=True)


class Ctl:
    """What hutchctl printed and how it exited."""

    def __init__(self, proc: subprocess.CompletedProcess) -> None:
        self.code = proc.returncode
        self.stdout = proc.stdout
        self.stderr = proc.stderr

    def ok(self) -> "Ctl":
        assert self.code == 0, f"hutchctl failed ({self.code}):\n{self.stdout}\n{self.stderr}"
        return self

    def json(self) -> Any:
        return json.loads(self.stdout)

    def __repr__(self) -> str:
        return f"Ctl(code={self.code}, stdout={self.stdout!r}, stderr={self.stderr!r})"


class Hutchd:
    """A running hutchd on temp paths."""

    def __init__(self, name: str, kit: Path) -> None:
        self.kit = kit
        self.root = Path(tempfile.mkdtemp(prefix=f"hutch-py-{name}-"))
        os.chmod(self.root, 0o755)
        tag = uuid.uuid4().hex[:8]
        self.cgroup_parent = f"hutch-py-{tag}"
        self.state = self.root / "state"
        self.run = self.root / "run"
        self.socket = self.run / "control.sock"
        self.config = self.root / "hutchd.toml"
        uid_base = 0x7F000000 + (zlib.crc32(f"py-{name}".encode()) % 4096) * 4096
        self.config.write_text(
            f'[paths]\nstate_dir = "{self.state}"\nruntime_dir = "{self.run}"\n'
            f'control_socket = "{self.socket}"\n\n'
            f'[sandbox]\ncgroup_parent = "{self.cgroup_parent}"\nuid_base = {uid_base}\nuid_count = 4096\n'
        )
        self.log_path = self.root / "hutchd.log"
        self._log = open(self.log_path, "ab")
        self.proc: Optional[subprocess.Popen] = subprocess.Popen(
            [str(_bin("hutchd")), "--config", str(self.config)],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=self._log,
            env={**os.environ, "HUTCH_LOG": "info"},
        )
        deadline = time.monotonic() + 30
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"hutchd exited ({self.proc.returncode}):\n{self.log()}")
            if self.socket.exists() and self.ctl("status").code == 0:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"hutchd did not answer in 30 s:\n{self.log()}")
            time.sleep(0.1)
        self.ctl("user", "add", "root", "--role", "admin", "--uid", "0").ok()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def ctl(self, *args: str) -> Ctl:
        """Runs ``hutchctl --socket SOCKET ARGS``."""
        env = {k: v for k, v in os.environ.items() if k != "HUTCH_CONTROL_SOCKET"}
        proc = subprocess.run(
            [str(_bin("hutchctl")), "--socket", str(self.socket), *args],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
        )
        return Ctl(proc)

    def plugin(self, name: str, main_py: str, manifest: str) -> Path:
        """A plugin dir: ``manifest`` (exec/args are added), main.py, vendor/."""
        d = self.root / "plugins-src" / name
        d.mkdir(parents=True)
        (d / "hutch-plugin.toml").write_text(f'exec = "/usr/bin/python3"\nargs = ["/plugin/main.py"]\n{manifest}')
        (d / "main.py").write_text(main_py)
        shutil.copytree(self.kit, d / "vendor", copy_function=os.link)
        return d

    def install(self, d: Path, *grant: str) -> None:
        """Installs ``d`` granting ``grant`` (all requested scopes when empty), enabled."""
        grants = [a for g in grant for a in ("--grant", g)] or ["--grant-all"]
        self.ctl("plugin", "install", str(d), *grants, "--enable").ok()

    def task(self, plugin: str, action: str, args: Dict[str, Any], *inputs: str) -> Dict[str, Any]:
        """Runs a task to its end; returns ``task show --json``."""
        ins = [a for i in inputs for a in ("--input", i)]
        r = self.ctl("--json", "task", "run", plugin, action, "--args", json.dumps(args), *ins, "--detach").ok()
        tid = r.json()["id"]
        return self.wait_task(tid, lambda t: t["task"]["state"] not in ("queued", "running"))

    def wait_task(self, tid: str, pred: Callable[[Dict[str, Any]], bool], timeout: float = 60) -> Dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            t = self.ctl("--json", "task", "show", tid).ok().json()
            if pred(t):
                return t
            if time.monotonic() > deadline:
                raise AssertionError(f"task {tid} did not get there in {timeout} s: {t}\n{self.log()[-4000:]}")
            time.sleep(0.1)

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None
        self._log.close()

    def cleanup(self) -> None:
        """Stops the daemon; kills and removes whatever is left in its cgroups."""
        self.stop()
        left: List[Path] = []
        for top, dirs, _ in os.walk("/sys/fs/cgroup"):
            if self.cgroup_parent in top:
                left.append(Path(top))
            elif top.count("/") > 8:
                dirs.clear()
        for cg in left:
            try:
                for pid in (cg / "cgroup.procs").read_text().split():
                    os.kill(int(pid), signal.SIGKILL)
            except OSError:
                pass
        for cg in sorted(left, key=lambda p: len(p.parts), reverse=True):
            try:
                cg.rmdir()
            except OSError:
                pass
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture
def hutchd(request: pytest.FixtureRequest, kit: Path) -> Iterator[Hutchd]:
    """A fresh daemon per test, cleaned up even when the test fails."""
    d = Hutchd(request.node.name[:24], kit)
    try:
        yield d
    finally:
        d.cleanup()
