#!/usr/bin/env bash
# Build a pinned Go command of LiveKit's from the Go module proxy, cached per user and version.
#
#   go-build.sh NAME MODULE VERSION PACKAGE LICENCE
#
# The module is downloaded into Go's module cache (`go mod download`), copied to a writable
# folder (`go install …@version` refuses modules whose go.mod has `replace` lines) and built
# with `go build`. The binary is cached outside the clone, so a fresh clone (CI) reuses it:
#
#   ${XDG_CACHE_HOME:-~/.cache}/voiceplatform/NAME/VERSION/NAME
#
# with the module's LICENSE beside it, and linked to var/bin/NAME. Run again: it only
# checks the cached binary (the LICENSE is copied last, so it marks a whole build).
# Used by build-server.sh (livekit-server) and build-sip.sh (livekit-sip).
set -euo pipefail

NAME="$1" MODULE="$2" VERSION="$3" PACKAGE="$4" LICENCE="$5"
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
CACHE_DIR="${XDG_CACHE_HOME:-$HOME/.cache}/voiceplatform/${NAME}/${VERSION}"
BINARY="${CACHE_DIR}/${NAME}"
LINK="${ROOT}/var/bin/${NAME}"

link_binary() {
  mkdir -p "$(dirname "$LINK")"
  ln -sfn "$BINARY" "$LINK"
}

if [ -x "$BINARY" ] && [ -f "${CACHE_DIR}/LICENSE" ]; then
  link_binary
  echo "${NAME} ${VERSION}: cached at ${BINARY} (linked to var/bin/${NAME})"
  exit 0
fi

if ! command -v go >/dev/null 2>&1; then
  echo "${NAME} ${VERSION}: cannot build, Go is not installed (https://go.dev/dl/, 1.26 or newer)" >&2
  exit 3
fi

started=$(date +%s)
echo "==> ${NAME} ${VERSION}: downloading ${MODULE}@${VERSION} from the Go module proxy"
src_dir=$(go mod download -json "${MODULE}@${VERSION}" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
if [ -z "$src_dir" ] || [ ! -d "$src_dir" ]; then
  echo "go mod download ${MODULE}@${VERSION} failed" >&2
  exit 1
fi

work="$(mktemp -d "${TMPDIR:-/tmp}/${NAME}-build.XXXXXX")"
trap 'chmod -R u+w "$work" 2>/dev/null; rm -rf "$work"' EXIT
cp -r "$src_dir" "$work/src"
chmod -R u+w "$work/src"

echo "==> ${NAME} ${VERSION}: building ${PACKAGE} (a first build downloads its modules and takes minutes on 2 cores)"
mkdir -p "$CACHE_DIR"
(cd "$work/src" && GOFLAGS="${GOFLAGS:-} -buildvcs=false" go build -trimpath -o "${BINARY}.new" "$PACKAGE")
mv "${BINARY}.new" "$BINARY"
licence_file=""
for candidate in LICENSE LICENSE.txt LICENSE.md; do
  [ -f "$work/src/$candidate" ] && { licence_file="$work/src/$candidate"; break; }
done
if [ -z "$licence_file" ]; then
  echo "${MODULE}@${VERSION} ships no LICENSE file" >&2
  exit 1
fi
# NOTICE too where there is one (Apache-2.0 asks to keep it with the binary).
[ -f "$work/src/NOTICE" ] && cp "$work/src/NOTICE" "${CACHE_DIR}/NOTICE"
cp "$licence_file" "${CACHE_DIR}/LICENSE.new"
mv "${CACHE_DIR}/LICENSE.new" "${CACHE_DIR}/LICENSE"
link_binary
echo "==> ${NAME} ${VERSION}: built in $(( $(date +%s) - started )) s: ${BINARY} (${LICENCE}, licence beside it)"
