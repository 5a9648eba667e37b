#!/usr/bin/env bash
# Build the pinned livekit-server release from the Go module proxy (`make livekit-server`).
#
# Nothing of the server's source is committed. The module is downloaded into Go's module
# cache (`go mod download`), copied to a writable folder (its go.mod has `replace` lines in
# newer releases, so `go install …@version` refuses it) and built with `go build`. The
# binary is cached per user and per version, outside the clone, so a fresh clone (CI)
# reuses it:
#
#   ${XDG_CACHE_HOME:-~/.cache}/voiceplatform/livekit-server/<version>/livekit-server
#
# and linked to var/bin/livekit-server. Run again: it only checks the cached binary.
#
# Why v1.13.5 (docs/livekit.md): v1.13.6 to v1.13.11 replace pion's webrtc, ice and dtls
# with LiveKit's forks (github.com/livekit/webrtc-pion/v4, ice/v4, dtls/v3 "-warp" tags),
# and the Go module proxy answers 403 "This module version is not available" for all of
# them, so those releases cannot be built here. v1.13.5 has no replace lines.
set -euo pipefail

VERSION="${LIVEKIT_SERVER_VERSION:-v1.13.5}"
MODULE="github.com/livekit/livekit-server"
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
CACHE_DIR="${XDG_CACHE_HOME:-$HOME/.cache}/voiceplatform/livekit-server/${VERSION}"
BINARY="${CACHE_DIR}/livekit-server"
LINK="${ROOT}/var/bin/livekit-server"

link_binary() {
  mkdir -p "$(dirname "$LINK")"
  ln -sfn "$BINARY" "$LINK"
}

if [ -x "$BINARY" ] && "$BINARY" --version 2>/dev/null | grep -q "version ${VERSION#v}\$"; then
  link_binary
  echo "livekit-server ${VERSION}: cached at ${BINARY} (linked to var/bin/livekit-server)"
  exit 0
fi

if ! command -v go >/dev/null 2>&1; then
  echo "livekit-server ${VERSION}: cannot build, Go is not installed (https://go.dev/dl/, 1.26 or newer)" >&2
  exit 3
fi

started=$(date +%s)
echo "==> livekit-server ${VERSION}: downloading ${MODULE}@${VERSION} from the Go module proxy"
src_dir=$(go mod download -json "${MODULE}@${VERSION}" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
if [ -z "$src_dir" ] || [ ! -d "$src_dir" ]; then
  echo "go mod download ${MODULE}@${VERSION} failed" >&2
  exit 1
fi

work="$(mktemp -d "${TMPDIR:-/tmp}/livekit-server-build.XXXXXX")"
trap 'chmod -R u+w "$work" 2>/dev/null; rm -rf "$work"' EXIT
cp -r "$src_dir" "$work/src"
chmod -R u+w "$work/src"

echo "==> livekit-server ${VERSION}: building (first build downloads ~150 modules and takes 1-3 minutes on 2 cores)"
mkdir -p "$CACHE_DIR"
(cd "$work/src" && GOFLAGS="${GOFLAGS:-} -buildvcs=false" go build -trimpath -o "${BINARY}.new" ./cmd/server)
mv "${BINARY}.new" "$BINARY"
cp "$work/src/LICENSE" "${CACHE_DIR}/LICENSE"
link_binary
echo "==> livekit-server ${VERSION}: built in $(( $(date +%s) - started )) s: ${BINARY} (Apache-2.0, licence beside it)"
