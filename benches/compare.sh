#!/usr/bin/env bash
# Times restorepoint on real system files against its floors (a bare stat walk, a plain copy)
# and, where installed, rsync. Usage: benches/compare.sh [SOURCE_DIR] (default /usr).
# Prints one line per measurement: name, seconds, peak RSS in MiB.
set -euo pipefail
src=${1:-/usr}
cd "$(dirname "$0")/.."
cargo build --release -q
bin=target/release
work=$(mktemp -d /var/tmp/rp-bench.XXXXXX)
trap 'rm -rf "$work"' EXIT
measure() { # name, command...
  local name=$1; shift
  sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true
  /usr/bin/time -f "%e %M" -o "$work/t" "$@" >/dev/null 2>"$work/err" || { cat "$work/err"; return 1; }
  read -r secs kb < "$work/t"
  printf '%-45s %8.2f s %8.1f MiB\n' "$name" "$secs" "$((kb / 1024))"
}
root=$(dirname "$src"); rel=$(basename "$src")
echo "source: $src ($(du -sh "$src" 2>/dev/null | cut -f1), $(find "$src" | wc -l) entries)"
measure "floor: bare stat walk (find -printf)" find "$src" -printf '%s %T@\n'
measure "floor: plain copy (cp -a)" cp -a "$src" "$work/copy"
measure "restorepoint: first snapshot" $bin/system_snapshot --root "$root" --source "/$rel" --store "$work/store"
measure "restorepoint: unchanged, second snapshot" $bin/system_snapshot --root "$root" --source "/$rel" --store "$work/store"
measure "restorepoint: restore into an empty dir" $bin/system_restore --store "$work/store" --point 2 --target "$work/restored" --yes
if command -v rsync >/dev/null; then
  measure "rsync -aHAXS: first" rsync -aHAXS "$src/" "$work/rsync/"
  measure "rsync -aHAXS: unchanged" rsync -aHAXS "$src/" "$work/rsync/"
fi
echo "store size: $(du -sh "$work/store" | cut -f1)"
