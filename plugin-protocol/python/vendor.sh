#!/usr/bin/env bash
# Make a Python plugin directory self-contained for the Hutch sandbox.
#
#   plugin-protocol/python/vendor.sh PLUGIN_DIR
#
# Fills PLUGIN_DIR/vendor/ (replacing it) with:
#   - grpcio, protobuf, typing_extensions pinned in requirements.txt, as
#     CPython 3.11 wheels for the Debian system interpreter /usr/bin/python3
#     (the only Python the sandbox sees; numpy comes from Debian's
#     python3-numpy under /usr, not from here);
#   - hutch/plugin/v1/plugin_pb2{,_grpc}.py generated from plugin.proto by
#     grpcio-tools (pinned in build-requirements.txt; cached in
#     ${XDG_CACHE_HOME:-~/.cache}/hutch-python, never vendored);
#   - the hutch_plugin helper package;
#   - byte code compiled in checked-hash mode (valid whatever the file times
#     after `hutchctl plugin install` copies the directory; /plugin is
#     read-only in the sandbox, so Python could not write it there).
# The plugin's main.py then starts with
#   sys.path.insert(0, os.path.join(os.path.dirname(__file__), "vendor"))
# Needs network access to PyPI (or a pip cache) the first time.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
proto_root=$(cd "$here/../proto" && pwd)
if [ "$#" -ne 1 ] || [ ! -d "$1" ]; then
  echo "usage: $0 PLUGIN_DIR   (an existing directory)" >&2
  exit 2
fi
dir=$(cd "$1" && pwd)
[ -f "$dir/hutch-plugin.toml" ] || echo "vendor.sh: note: $dir has no hutch-plugin.toml (yet)" >&2
start=$(date +%s%N)

python=/usr/bin/python3
if [ ! -x "$python" ]; then
  echo "vendor.sh: $python not found: install Debian's python3 (apt-get install python3)" >&2
  exit 1
fi
# pip for CPython 3.11 wheels: Debian's own pip if present, else any pip
# told the target interpreter version (wheels only, no builds).
if "$python" -m pip --version >/dev/null 2>&1; then
  pip=("$python" -m pip)
elif command -v pip3 >/dev/null; then
  pip=(pip3)
else
  pip=(pip)
fi
pip_target() { # DEST REQUIREMENTS
  "${pip[@]}" install --quiet --disable-pip-version-check --no-warn-script-location \
    --python-version 3.11 --only-binary=:all: --no-compile --target "$1" -r "$2" \
    2> >(grep -v "Running pip as the 'root' user" >&2)
}

# 1. the stub generator (cached by the hash of its pins)
cache=${XDG_CACHE_HOME:-$HOME/.cache}/hutch-python
tools="$cache/tools-$(sha256sum "$here/build-requirements.txt" | cut -c1-12)"
if [ ! -f "$tools/.complete" ]; then
  echo "vendor.sh: installing grpcio-tools into $tools" >&2
  rm -rf "$tools.tmp"
  mkdir -p "$cache"
  pip_target "$tools.tmp" "$here/build-requirements.txt"
  touch "$tools.tmp/.complete"
  rm -rf "$tools"
  mv "$tools.tmp" "$tools"
fi

# 2. a fresh vendor dir, built beside and swapped in
vendor="$dir/vendor"
tmp="$dir/.vendor.tmp"
rm -rf "$tmp"
mkdir -p "$tmp"
pip_target "$tmp" "$here/requirements.txt"
rm -rf "$tmp/bin"

# 3. the stubs, generated from the .proto
PYTHONPATH="$tools" "$python" -m grpc_tools.protoc -I "$proto_root" \
  --python_out="$tmp" --grpc_python_out="$tmp" --pyi_out="$tmp" \
  hutch/plugin/v1/plugin.proto

# 4. the helper
cp -r "$here/hutch_plugin" "$tmp/hutch_plugin"
find "$tmp" -name __pycache__ -type d -prune -exec rm -rf {} +

# 5. byte code valid after any copy
"$python" -m compileall -q -j 0 --invalidation-mode checked-hash "$tmp" >/dev/null

{
  echo "# written by plugin-protocol/python/vendor.sh; do not edit"
  grep -v '^#' "$here/requirements.txt"
  echo "hutch_plugin==$(sed -n 's/^__version__ = "\(.*\)"/\1/p' "$here/hutch_plugin/core.py")"
} > "$tmp/VENDORED.txt"

rm -rf "$vendor"
mv "$tmp" "$vendor"
ms=$(( ($(date +%s%N) - start) / 1000000 ))
printf 'vendor.sh: %s ready (%s, %d files) in %d.%01d s\n' "$vendor" \
  "$(du -sh "$vendor" | cut -f1)" "$(find "$vendor" -type f | wc -l)" $((ms / 1000)) $((ms % 1000 / 100)) >&2
