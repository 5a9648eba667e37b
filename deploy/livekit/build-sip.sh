#!/usr/bin/env bash
# Build the pinned livekit-sip release, LiveKit's SIP service, from the Go module proxy
# (`make livekit-sip`), cached per user and version like the server (go-build.sh):
#
#   ${XDG_CACHE_HOME:-~/.cache}/voiceplatform/livekit-sip/<version>/livekit-sip
#
# Why v1.8.0 (docs/telephony.md): it downloads whole from the proxy with no `replace`
# lines, and uses the same psrpc (v0.7.2) as livekit-server v1.13.5; the proxy refuses
# v1.9-v1.11. Its cgo needs Debian's libopus-dev, libopusfile-dev and libsoxr-dev to build
# (libopus0, libopusfile0, libsoxr0 to run): this says so when they are missing.
set -euo pipefail

missing=()
for lib in opus opusfile soxr; do
  pkg-config --exists "$lib" 2>/dev/null || missing+=("lib${lib}-dev")
done
if [ "${#missing[@]}" -gt 0 ] && ! [ -f "${XDG_CACHE_HOME:-$HOME/.cache}/voiceplatform/livekit-sip/${LIVEKIT_SIP_VERSION:-v1.8.0}/LICENSE" ]; then
  echo "livekit-sip: cannot build, missing Debian packages: ${missing[*]} (apt-get install -y ${missing[*]} pkg-config)" >&2
  exit 3
fi

exec "$(dirname "$0")/go-build.sh" livekit-sip github.com/livekit/sip \
  "${LIVEKIT_SIP_VERSION:-v1.8.0}" ./cmd/livekit-sip Apache-2.0
