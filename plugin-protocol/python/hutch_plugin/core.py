"""Connection, hello handshake, task loop and object streaming.

The pieces, lowest first:

* :func:`connect` dials ``$HUTCH_SOCKET`` and returns a ``grpc.Channel``.
* :class:`Session` is the Agent stream: :meth:`Session.open` sends the hello
  and checks Hutch's welcome (protocol version); iterate it for tasks and
  cancels; :meth:`Session.send` puts events on the stream.
* :func:`read_object` / :func:`write_object` stream object content in chunks
  of at most :data:`MAX_CHUNK_SIZE`, carrying the task id in the
  ``hutch-task-id`` metadata when given one.
* :class:`Plugin` ties them together: register actions with
  ``@plugin.action("name")``, call :meth:`Plugin.run`; each task runs in its
  own thread with a :class:`Task` context (progress, log, outputs, object I/O,
  cancel), heartbeats are sent in the background, and the task ends with
  ``completed`` (the action's return value as JSON) or ``failed``.
"""

from __future__ import annotations

import json
import os
import queue
import sys
import threading
import traceback
from typing import IO, Any, Callable, Dict, Iterable, Iterator, List, Mapping, Optional, Tuple, Union

import grpc

from hutch.plugin.v1 import plugin_pb2 as pb
from hutch.plugin.v1 import plugin_pb2_grpc as pb_grpc

from .errors import (
    Cancelled,
    HutchError,
    ProtocolError,
    TaskFailed,
    from_rpc_error,
)

__version__ = "0.1.0"

#: The environment variable naming the plugin's API socket.
SOCKET_ENV = "HUTCH_SOCKET"
#: The gRPC metadata key carrying the task id of a Data call.
TASK_ID_METADATA = "hutch-task-id"
#: Largest object chunk Hutch accepts or sends in one message (1 MiB).
MAX_CHUNK_SIZE = pb.MAX_CHUNK_SIZE
#: The protocol version this helper speaks.
PROTOCOL_VERSION = pb.PROTOCOL_VERSION_1
#: Seconds between heartbeats (Hutch wants one at least every 10 s).
HEARTBEAT_INTERVAL = 5.0

_LEVELS = {
    "debug": pb.LOG_LEVEL_DEBUG,
    "info": pb.LOG_LEVEL_INFO,
    "warn": pb.LOG_LEVEL_WARN,
    "warning": pb.LOG_LEVEL_WARN,
    "error": pb.LOG_LEVEL_ERROR,
}

Metadata = Tuple[Tuple[str, str], ...]
Content = Union[bytes, bytearray, memoryview, Iterable[bytes], IO[bytes]]


def _metadata(task_id: Optional[str]) -> Metadata:
    return ((TASK_ID_METADATA, task_id),) if task_id else ()


def connect(path: Optional[str] = None, timeout: float = 10.0) -> grpc.Channel:
    """Dials the API socket ``path`` (default ``$HUTCH_SOCKET``).

    Raises:
        HutchError: the variable is unset or the socket does not answer
            within ``timeout`` seconds.
    """
    if path is None:
        path = os.environ.get(SOCKET_ENV)
        if not path:
            raise HutchError(
                "connect",
                f"environment variable {SOCKET_ENV} is not set "
                "(run the plugin under hutchd, or with `hutchd try PLUGIN_DIR`)",
            )
    # grpc-core's default :authority for a unix: target is the url-encoded
    # socket path, which Hutch's HTTP/2 server refuses (RST_STREAM
    # PROTOCOL_ERROR); any plain host name will do.
    channel = grpc.insecure_channel(f"unix:{path}", options=[("grpc.default_authority", "localhost")])
    try:
        grpc.channel_ready_future(channel).result(timeout=timeout)
    except grpc.FutureTimeoutError:
        channel.close()
        raise HutchError(f"connect {path}", f"no answer within {timeout:g} s") from None
    return channel


def data_stub(channel: grpc.Channel) -> pb_grpc.DataStub:
    """A raw Data client on ``channel`` (pass ``metadata=`` yourself)."""
    return pb_grpc.DataStub(channel)


def _ref(dataset_or_ref: Union[str, pb.ObjectRef, pb.ObjectInfo], key: Optional[str], version: int) -> Tuple[str, str, int]:
    if isinstance(dataset_or_ref, (pb.ObjectRef, pb.ObjectInfo)):
        return dataset_or_ref.dataset_id, dataset_or_ref.key, dataset_or_ref.version
    if key is None:
        raise TypeError("read_object(dataset_id, key): key is missing")
    return dataset_or_ref, key, version


class ObjectReader:
    """An object being read: ``info`` (its :class:`ObjectInfo`, available at
    once) and iteration over its content chunks (``bytes``, in order)."""

    def __init__(self, op: str, info: pb.ObjectInfo, rest: Iterator[pb.GetObjectResponse], check: Callable[[], None]) -> None:
        self.op = op
        self.info = info
        self._rest = rest
        self._check = check

    def __iter__(self) -> Iterator[bytes]:
        try:
            for msg in self._rest:
                self._check()
                if msg.WhichOneof("part") == "chunk":
                    yield msg.chunk
        except grpc.RpcError as e:
            self._check()
            raise from_rpc_error(self.op, e) from None

    def read_all(self) -> bytes:
        """The whole content in memory (small objects only)."""
        return b"".join(self)


def read_object(
    stub: pb_grpc.DataStub,
    dataset_or_ref: Union[str, pb.ObjectRef, pb.ObjectInfo],
    key: Optional[str] = None,
    version: int = 0,
    task_id: Optional[str] = None,
    _check: Callable[[], None] = lambda: None,
) -> ObjectReader:
    """Opens object ``dataset_id/key`` (``version`` 0 = current) for streaming.

    ``dataset_or_ref`` may be an :class:`ObjectRef` (e.g. a task input).

    Raises:
        HutchError: (a subclass) when Hutch refuses, e.g. PermissionDenied.
    """
    ds, k, v = _ref(dataset_or_ref, key, version)
    op = f"get object {ds}/{k}"
    req = pb.GetObjectRequest(dataset_id=ds, key=k, version=v)
    try:
        stream = stub.GetObject(req, metadata=_metadata(task_id))
        first = next(stream, None)
    except grpc.RpcError as e:
        _check()
        raise from_rpc_error(op, e) from None
    if first is None or first.WhichOneof("part") != "info":
        raise ProtocolError(op, "hutch did not send the object info first")
    return ObjectReader(op, first.info, stream, _check)


def _chunks(content: Content) -> Iterator[bytes]:
    if isinstance(content, (bytes, bytearray, memoryview)):
        view = memoryview(content)
        for i in range(0, len(view), MAX_CHUNK_SIZE):
            yield bytes(view[i : i + MAX_CHUNK_SIZE])
        return
    read = getattr(content, "read", None)
    if read is not None:
        while True:
            block = read(MAX_CHUNK_SIZE)
            if not block:
                return
            yield bytes(block)
    for block in content:  # type: ignore[union-attr]
        view = memoryview(block)
        for i in range(0, len(view), MAX_CHUNK_SIZE):
            yield bytes(view[i : i + MAX_CHUNK_SIZE])


def write_object(
    stub: pb_grpc.DataStub,
    dataset_id: str,
    key: str,
    content: Content,
    metadata: Optional[Mapping[str, str]] = None,
    expected_version: Optional[int] = None,
    task_id: Optional[str] = None,
    _check: Callable[[], None] = lambda: None,
) -> pb.ObjectInfo:
    """Streams ``content`` into object ``dataset_id/key``; returns its new info.

    ``content`` is ``bytes``, a binary file object, or an iterable of
    ``bytes`` (any sizes: they are re-cut into chunks of at most
    :data:`MAX_CHUNK_SIZE`), so large objects never need to be in memory.
    ``expected_version`` makes the write conditional (0 = only if absent).

    Raises:
        HutchError: (a subclass) when Hutch refuses, e.g. PermissionDenied or
            FailedPrecondition for a version mismatch.
    """
    op = f"put object {dataset_id}/{key}"
    header = pb.PutObjectHeader(dataset_id=dataset_id, key=key, metadata=dict(metadata or {}))
    if expected_version is not None:
        header.expected_version = expected_version

    failure: List[BaseException] = []

    def requests() -> Iterator[pb.PutObjectRequest]:
        yield pb.PutObjectRequest(header=header)
        try:
            for chunk in _chunks(content):
                _check()
                yield pb.PutObjectRequest(chunk=chunk)
        except BaseException as e:
            # Raising here makes grpc cancel the call, so a content source
            # that fails half-way never stores a truncated object; the
            # original error is re-raised below instead of grpc's UNKNOWN.
            failure.append(e)
            raise

    try:
        return stub.PutObject(requests(), metadata=_metadata(task_id))
    except grpc.RpcError as e:
        if failure:
            raise failure[0] from None
        _check()
        raise from_rpc_error(op, e) from None


class Session:
    """The Agent stream of this instance (one per instance).

    Iterating yields ``TaskAssignment`` and ``Cancel`` messages until Hutch
    closes the stream; :meth:`send` is thread-safe.
    """

    def __init__(self, responses: Iterator[pb.DaemonMessage], out: "queue.Queue[Optional[pb.PluginMessage]]", welcome: pb.Welcome) -> None:
        self._responses = responses
        self._out = out
        #: Hutch's welcome: plugin id, version, instance id, granted scopes.
        self.welcome = welcome

    @classmethod
    def open(
        cls,
        channel: grpc.Channel,
        actions: Iterable[str] = (),
        client: str = f"hutch-plugin-py {__version__}",
        protocol_version: int = PROTOCOL_VERSION,
    ) -> "Session":
        """Opens the stream, sends the hello and waits for the welcome.

        ``protocol_version`` is only for testing Hutch's version check.

        Raises:
            ProtocolError: Hutch speaks another protocol version (the message
                says which), or answered something else than a welcome.
            HutchError: the stream was refused (e.g. ALREADY_EXISTS: a second
                session of the same instance).
        """
        out: "queue.Queue[Optional[pb.PluginMessage]]" = queue.Queue()
        out.put(pb.PluginMessage(hello=pb.Hello(protocol_version=protocol_version, actions=list(actions), client=client)))

        def outgoing() -> Iterator[pb.PluginMessage]:
            while True:
                msg = out.get()
                if msg is None:
                    return
                yield msg

        stub = pb_grpc.AgentStub(channel)
        responses = stub.Session(outgoing())
        try:
            first = next(responses, None)
        except grpc.RpcError as e:
            out.put(None)
            if e.code() == grpc.StatusCode.FAILED_PRECONDITION:
                raise ProtocolError("agent hello", e.details() or "refused", e.code()) from None
            raise from_rpc_error("agent hello", e) from None
        if first is None or first.WhichOneof("msg") != "welcome":
            out.put(None)
            raise ProtocolError("agent hello", "hutch did not answer with a welcome")
        if first.welcome.protocol_version != PROTOCOL_VERSION:
            out.put(None)
            raise ProtocolError(
                "agent hello",
                f"protocol version mismatch: plugin speaks {PROTOCOL_VERSION}, "
                f"hutch speaks {first.welcome.protocol_version}",
            )
        return cls(responses, out, first.welcome)

    def __iter__(self) -> Iterator[Union[pb.TaskAssignment, pb.Cancel]]:
        try:
            for msg in self._responses:
                kind = msg.WhichOneof("msg")
                if kind == "task":
                    yield msg.task
                elif kind == "cancel":
                    yield msg.cancel
        except grpc.RpcError as e:
            if e.code() == grpc.StatusCode.CANCELLED:
                return
            raise from_rpc_error("agent stream", e) from None

    def send(self, msg: pb.PluginMessage) -> None:
        """Queues ``msg`` on the stream."""
        self._out.put(msg)

    def event(self, task_id: str, **event: Any) -> None:
        """Sends a ``TaskEvent`` for ``task_id``: ``event(id, progress=pb.Progress(...))``."""
        self.send(pb.PluginMessage(event=pb.TaskEvent(task_id=task_id, **event)))

    def heartbeat(self, busy_tasks: Iterable[str] = ()) -> None:
        """Sends a heartbeat listing the tasks being worked on."""
        self.send(pb.PluginMessage(heartbeat=pb.Heartbeat(busy_tasks=list(busy_tasks))))

    def close(self) -> None:
        """Ends our side of the stream."""
        self._out.put(None)


class Task:
    """What an action receives: the task and the means to report on it.

    Attributes:
        id: the task id (sent as ``hutch-task-id`` metadata on Data calls).
        action: the action name.
        args: the arguments, parsed from JSON (``{}`` when empty).
        acting_user: who submitted the task (information only).
        inputs: the input objects (``ObjectRef``: dataset_id, key, version).
        welcome: Hutch's welcome (plugin id, instance, granted scopes).
    """

    def __init__(self, assignment: pb.TaskAssignment, session: Session, stub: pb_grpc.DataStub) -> None:
        self.id = assignment.task_id
        self.action = assignment.action
        self.args_json = assignment.args_json
        self.acting_user = assignment.acting_user
        self.inputs: List[pb.ObjectRef] = list(assignment.inputs)
        self.welcome = session.welcome
        self.args: Dict[str, Any] = {}
        self._session = session
        self._stub = stub
        self._lock = threading.Lock()
        self._ended = False
        self._cancel = threading.Event()
        self._cancel_reason = ""

    # -- cancel ------------------------------------------------------------

    @property
    def cancelled(self) -> bool:
        """Whether Hutch asked to stop this task."""
        return self._cancel.is_set()

    @property
    def cancel_reason(self) -> str:
        """Hutch's reason for the cancel ("" before one)."""
        return self._cancel_reason

    def check_cancelled(self) -> None:
        """Raises :class:`Cancelled` if the task was cancelled; call it often
        (e.g. per block of rows) so a cancel stops the work promptly."""
        if self._cancel.is_set():
            raise Cancelled(self._cancel_reason)

    # -- events ------------------------------------------------------------

    def _event(self, **event: Any) -> None:
        with self._lock:
            if not self._ended:
                self._session.event(self.id, **event)

    def progress(self, percent: float, message: str = "") -> None:
        """Reports ``percent`` (0..100) done with a short message."""
        self._event(progress=pb.Progress(percent=max(0.0, min(100.0, float(percent))), message=message))

    def log(self, line: str, level: str = "info") -> None:
        """Adds a line to the task's log; ``level``: debug, info, warn, error."""
        self._event(log=pb.LogLine(level=_LEVELS.get(level, pb.LOG_LEVEL_INFO), line=line))

    def output(self, name: str, value: Any = None, object: Optional[Union[pb.ObjectInfo, pb.ObjectRef]] = None) -> None:
        """Yields a named output: a JSON-serialisable ``value`` and/or an
        ``object`` (the ``ObjectInfo`` :meth:`write_object` returned)."""
        ref = None
        if object is not None:
            ref = pb.ObjectRef(dataset_id=object.dataset_id, key=object.key, version=object.version)
        value_json = "" if value is None else json.dumps(value)
        self._event(output=pb.Output(name=name, value_json=value_json, object=ref))

    def _end(self, **event: Any) -> bool:
        with self._lock:
            if self._ended:
                return False
            self._ended = True
            self._session.event(self.id, **event)
            return True

    # -- data --------------------------------------------------------------

    @property
    def metadata(self) -> Metadata:
        """``(("hutch-task-id", id),)``: pass as ``metadata=`` to raw Data calls."""
        return _metadata(self.id)

    @property
    def data(self) -> pb_grpc.DataStub:
        """The raw Data client (pass ``metadata=task.metadata`` yourself)."""
        return self._stub

    def read_object(self, dataset_or_ref: Union[str, pb.ObjectRef, pb.ObjectInfo], key: Optional[str] = None, version: int = 0) -> ObjectReader:
        """Opens an object for chunked reading as this task (see :func:`read_object`)."""
        self.check_cancelled()
        return read_object(self._stub, dataset_or_ref, key, version, task_id=self.id, _check=self.check_cancelled)

    def write_object(
        self,
        dataset_id: str,
        key: str,
        content: Content,
        metadata: Optional[Mapping[str, str]] = None,
        expected_version: Optional[int] = None,
    ) -> pb.ObjectInfo:
        """Streams content into an object as this task (see :func:`write_object`)."""
        self.check_cancelled()
        return write_object(
            self._stub, dataset_id, key, content, metadata, expected_version, task_id=self.id, _check=self.check_cancelled
        )


Action = Callable[[Task], Any]


class Plugin:
    """A plugin: actions registered with :meth:`action`, run by :meth:`run`.

    Example::

        plugin = hutch_plugin.Plugin()

        @plugin.action("blur")
        def blur(task: hutch_plugin.Task) -> dict:
            task.progress(50, "halfway")
            return {"done": True}

        if __name__ == "__main__":
            plugin.run()
    """

    def __init__(self, client: str = f"hutch-plugin-py {__version__}") -> None:
        self.actions: Dict[str, Action] = {}
        self.client = client
        self.session: Optional[Session] = None
        self.channel: Optional[grpc.Channel] = None
        self._running: Dict[str, Task] = {}
        self._lock = threading.Lock()

    def action(self, name: str) -> Callable[[Action], Action]:
        """Decorator: registers the function as the handler of action ``name``.

        The handler gets a :class:`Task`; its return value (JSON-serialisable,
        or None) becomes the task's result. Raising ends the task as failed:
        :class:`TaskFailed` with its message, :class:`Cancelled` as
        "cancelled: <reason>", anything else as "<Type>: <message>".
        """

        def register(fn: Action) -> Action:
            self.actions[name] = fn
            return fn

        return register

    def open(self, socket: Optional[str] = None) -> Session:
        """Connects and says hello (the first half of :meth:`run`)."""
        self.channel = connect(socket)
        self.session = Session.open(self.channel, self.actions.keys(), self.client)
        return self.session

    def run(self, socket: Optional[str] = None) -> None:
        """Connects to ``$HUTCH_SOCKET`` (or ``socket``), says hello and serves
        tasks until Hutch closes the stream. Heartbeats every
        :data:`HEARTBEAT_INTERVAL` seconds in the background.

        Raises:
            HutchError: the connection or hello failed, or the stream broke.
        """
        session = self.session or self.open(socket)
        assert self.channel is not None
        stub = data_stub(self.channel)
        stop = threading.Event()
        beat = threading.Thread(target=self._heartbeats, args=(session, stop), name="hutch-heartbeat", daemon=True)
        beat.start()
        try:
            for msg in session:
                if isinstance(msg, pb.TaskAssignment):
                    task = Task(msg, session, stub)
                    with self._lock:
                        self._running[task.id] = task
                    threading.Thread(target=self._work, args=(task,), name=f"task-{task.id}", daemon=True).start()
                else:
                    with self._lock:
                        task_or_none = self._running.get(msg.task_id)
                    if task_or_none is not None:
                        task_or_none._cancel_reason = msg.reason or "cancelled"
                        task_or_none._cancel.set()
                        # Report at once, as the Rust helper does; the handler
                        # notices the flag at its next check and its later
                        # events are dropped.
                        task_or_none._end(failed=pb.Failed(error=f"cancelled: {task_or_none._cancel_reason}"))
        finally:
            stop.set()
            session.close()

    def _heartbeats(self, session: Session, stop: threading.Event) -> None:
        while not stop.wait(HEARTBEAT_INTERVAL):
            with self._lock:
                busy = [t for t, task in self._running.items() if not task._ended]
            session.heartbeat(busy)

    def _work(self, task: Task) -> None:
        task._event(started=pb.Started())
        try:
            handler = self.actions.get(task.action)
            if handler is None:
                raise TaskFailed(f"unknown action {task.action!r} (this plugin offers: {', '.join(sorted(self.actions))})")
            try:
                task.args = json.loads(task.args_json) if task.args_json.strip() else {}
            except ValueError as e:
                raise TaskFailed(f"args are not JSON: {e}") from None
            result = handler(task)
            task._end(completed=pb.Completed(result_json="" if result is None else json.dumps(result)))
        except Cancelled:
            task._end(failed=pb.Failed(error=f"cancelled: {task.cancel_reason}"))
        except TaskFailed as e:
            task._end(failed=pb.Failed(error=str(e)))
        except HutchError as e:
            if task.cancelled:
                task._end(failed=pb.Failed(error=f"cancelled: {task.cancel_reason}"))
            else:
                task._end(failed=pb.Failed(error=str(e)))
        except Exception as e:  # noqa: BLE001 - any bug in an action fails its task, not the plugin
            traceback.print_exc(file=sys.stderr)
            task._end(failed=pb.Failed(error=f"{type(e).__name__}: {e}"))
        finally:
            with self._lock:
                self._running.pop(task.id, None)

