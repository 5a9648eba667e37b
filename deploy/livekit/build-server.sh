#!/usr/bin/env bash
# Build the pinned livekit-server release from the Go module proxy (`make livekit-server`).
#
# Nothing of the server's source is committed. deploy/livekit/go-build.sh downloads the
# module from the Go module proxy and builds it, cached per user and per version outside
# the clone, so a fresh clone (CI) reuses it:
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

exec "$(dirname "$0")/go-build.sh" livekit-server github.com/livekit/livekit-server \
  "${LIVEKIT_SERVER_VERSION:-v1.13.5}" ./cmd/server Apache-2.0
