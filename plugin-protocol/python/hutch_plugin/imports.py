"""Clear errors for imports the sandbox cannot satisfy.

Inside the sandbox a plugin sees only ``/usr`` (and ``/lib``, ``/bin`` ...),
``/plugin`` (its own directory, read-only; vendored packages live in
``/plugin/vendor``), a private ``/tmp`` and the ``[filesystem] read_only``
paths of its manifest. A package installed anywhere else on the host (a
user's ``~/.local``, a virtualenv, ``/opt/...``) does not exist in there, so
``import`` fails with a bare ``ModuleNotFoundError``. Wrap your imports::

    from hutch_plugin.imports import explain_imports

    with explain_imports():
        import numpy as np

and a failure prints (and exits with status 3)::

    hutch: cannot import 'skimage': No module named 'skimage'
    hutch: inside the sandbox only /usr, /plugin (your plugin directory, ...
"""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from typing import Iterator, List

#: Exit status of a plugin whose imports failed.
IMPORT_ERROR_EXIT = 3

#: Where the explanation lives in the repository's docs.
DOCS_SECTION = "docs/plugin-authors.md#imports-in-the-sandbox"


def missing_path_entries() -> List[str]:
    """``sys.path`` entries that do not exist here (not visible in the sandbox)."""
    return [p for p in sys.path if p and not os.path.exists(p)]


def explanation(err: ImportError) -> str:
    """The multi-line explanation printed for ``err``."""
    name = getattr(err, "name", None) or "?"
    lines = [
        f"hutch: cannot import {name!r}: {err}",
        "hutch: inside the sandbox only /usr, /lib, /bin, /plugin (your plugin directory, read-only),",
        "hutch: a private /tmp and the manifest's [filesystem] read_only paths exist; other host paths do not.",
    ]
    missing = missing_path_entries()
    if missing:
        lines.append("hutch: sys.path entries not visible in the sandbox: " + ", ".join(missing))
    lines += [
        "hutch: fix: vendor the package into the plugin directory "
        "(pip install --target PLUGIN_DIR/vendor, see plugin-protocol/python/vendor.sh),",
        "hutch:      use a Debian package under /usr (apt-get install python3-...), or declare its host",
        "hutch:      directory in the manifest: [filesystem] read_only = [\"/path/to/site-packages\"].",
        f"hutch: see {DOCS_SECTION}",
    ]
    return "\n".join(lines)


@contextmanager
def explain_imports(exit: bool = True) -> Iterator[None]:
    """Context manager: an ``ImportError`` inside prints :func:`explanation`
    to stderr and exits with :data:`IMPORT_ERROR_EXIT` (``exit=True``) or
    re-raises with the explanation as message (``exit=False``)."""
    try:
        yield
    except ImportError as err:
        text = explanation(err)
        if not exit:
            raise ImportError(text, name=err.name, path=err.path) from err
        print(text, file=sys.stderr, flush=True)
        sys.exit(IMPORT_ERROR_EXIT)
