#!/usr/bin/env bash
# Builds the Debian package: the release binaries, their man pages and shell completions
# (generated from the clap definitions), then `cargo deb`. Output: target/debian/*.deb.
# PROFILE=dev builds it from the debug binaries (what the packaging test does: faster).
set -euo pipefail
cd "$(dirname "$0")/.."
profile=${PROFILE:-release}
dir=release; [ "$profile" = dev ] && dir=debug
cargo build --profile "$profile" --locked -q
target=${CARGO_TARGET_DIR:-target}
"$target/$dir/system_snapshot" generate-assets target/assets
cargo deb --no-build --profile "$profile" "$@"
