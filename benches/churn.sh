#!/usr/bin/env bash
# Issue 10's figures, side by side in one run: restorepoint against its floors (a bare stat walk,
# `cp -a`, a full read), an rsync mirror (`rsync -aHAXS --delete`) and, where installed, restic,
# borg and rdiff-backup, on a copy of this machine's real files with hardlinks, logs and a sparse
# disk image, through 10 days of churn (package upgrades, log appends and rotation, block writes
# into the image, a day without changes). Cold cache for every measurement.
#
# Usage: benches/churn.sh [--install] [--sparse] [--million]
#   --install  apt-get install rsync restic borgbackup rdiff-backup first
#   --sparse   also the 20 GiB sparse image with a 700-byte edit
#   --million  also a tree of 1,000,000 small files
# Environment: BENCH_DIR (default /var/tmp/rp-churn), BENCH_SOURCES (default
#   "/usr/lib/x86_64-linux-gnu /usr/share /usr/bin /etc"), BENCH_DAYS (default 10), BENCH_TOOLS
#   (default: every one installed, of "rp rsync restic borg rdiff"), BENCH_REPS (default 3: the
#   floors, and restorepoint's and rsync's first snapshot, no-change run and restore, are each
#   measured that many times and their median taken; one cold-cache run of `cp -a` varied by 45 %
#   between runs on the same VM).
# Prints one line per measurement (seconds, peak RSS) and then the ratios the issue names.
set -euo pipefail
install=0 sparse=0 million=0
for a in "$@"; do
  case $a in
    --install) install=1 ;; --sparse) sparse=1 ;; --million) million=1 ;;
    *) echo "unknown argument $a" >&2; exit 2 ;;
  esac
done
[ "$(id -u)" = 0 ] || { echo "run as root: the copy keeps owners, and caches are dropped" >&2; exit 2; }
if [ $install = 1 ]; then
  apt-get update -qq && apt-get install -y -qq rsync restic borgbackup rdiff-backup >/dev/null
fi
cd "$(dirname "$0")/.."
cargo build --release -q
rp=$PWD/target/release
W=${BENCH_DIR:-/var/tmp/rp-churn}
SOURCES=${BENCH_SOURCES:-"/usr/lib/x86_64-linux-gnu /usr/share /usr/bin /etc"}
DAYS=${BENCH_DAYS:-10}
REPS=${BENCH_REPS:-3}
rm -rf "$W"; mkdir -p "$W"
data=$W/data
results=$W/results
: > "$results"
have() { command -v "$1" >/dev/null; }
export BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK=yes BORG_RELOCATED_REPO_ACCESS_IS_OK=yes
tools="rp"
have rsync && tools="$tools rsync"
have restic && tools="$tools restic"
have borg && tools="$tools borg"
have rdiff-backup && tools="$tools rdiff"
# BENCH_TOOLS="rp rsync" limits a run to some of them (the peers take most of a run's time).
if [ -n "${BENCH_TOOLS:-}" ]; then
  kept=""
  for t in $tools; do if [[ " $BENCH_TOOLS " == *" $t "* ]]; then kept="$kept $t"; fi; done
  tools=${kept# }
fi

measure() { # key command... : appends "key seconds kib user sys" to $results
  local key=$1; shift
  sync; echo 3 > /proc/sys/vm/drop_caches
  local rc=0
  /usr/bin/time -f "%e %M %U %S" -o "$W/t" "$@" >"$W/out" 2>"$W/err" || rc=$?
  # restorepoint's exit 3 is "done, with warnings" (a boot area it may not read, a file that
  # vanished): the point is complete.
  if [ $rc != 0 ] && ! { [ $rc = 3 ] && [[ $1 == "$rp"/* ]]; }; then
    echo "FAILED ($rc): $key: $*"; cat "$W/err"; exit 1
  fi
  local secs kib user sys; read -r secs kib user sys < <(tail -1 "$W/t")
  echo "$key $secs $kib $user $sys" >> "$results"
  printf '%-44s %9.2f s %7d MiB  (cpu %.2f user + %.2f sys)\n' "$key" "$secs" $((kib / 1024)) "$user" "$sys"
}
latest() { "$rp/system_snapshot" list --store "$1" --json | grep -o '"id": *[0-9]*' | tail -1 | grep -o '[0-9]*$'; }
size_of() { du -s --block-size=1 "$1" | cut -f1; }
median() { sort -n | awk '{ v[NR] = $1 } END { if (NR) print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
# A measurement's figure (column 2 seconds, 3 peak KiB, 4 bytes): the median of its repetitions.
get() { awk -v k="$1" '$1 == k { print $'"${2:-2}"' }' "$results" | median; }
# CPU seconds (user + sys) of a measurement: steadier than wall time on a shared machine.
cpu() { awk -v k="$1" '$1 == k { print $4 + $5 }' "$results" | median; }
# Tools whose first snapshot, no-change run and restore are repeated (the peers' repositories
# would need making again: they run once).
repeated() { [ "$1" = rp ] || [ "$1" = rsync ]; }

snapshot() { # tool key
  case $1 in
    rp) measure "$2" "$rp/system_snapshot" --root "$data" --source / --store "$W/rp-store" ;;
    rsync) measure "$2" rsync -aHAXS --delete "$data/" "$W/rsync-mirror/" ;;
    restic) measure "$2" env RESTIC_PASSWORD=bench restic -q -r "$W/restic" backup "$data" ;;
    borg) measure "$2" borg create "$W/borg::p$(date +%s%N)" "$data" ;;
    rdiff) measure "$2" rdiff-backup backup "$data" "$W/rdiff" ;;
  esac
}
store_of() {
  case $1 in
    rp) echo "$W/rp-store" ;; rsync) echo "$W/rsync-mirror" ;; restic) echo "$W/restic" ;;
    borg) echo "$W/borg" ;; rdiff) echo "$W/rdiff" ;;
  esac
}
restore() { # tool key
  local t=$W/restored-$1; rm -rf "$t"
  case $1 in
    rp) measure "$2" "$rp/system_restore" --store "$W/rp-store" --point "$(latest "$W/rp-store")" --target "$t" --yes ;;
    rsync) measure "$2" rsync -aHAXS "$W/rsync-mirror/" "$t/" ;;
    restic) measure "$2" env RESTIC_PASSWORD=bench restic -q -r "$W/restic" restore latest --target "$t" ;;
    borg) mkdir -p "$t"; measure "$2" sh -c "cd '$t' && borg extract '$W/borg::$(borg list --last 1 --short "$W/borg")'" ;;
    rdiff) measure "$2" rdiff-backup restore "$W/rdiff" "$t" ;;
  esac
}

echo "== building the data set from $SOURCES"
mkdir -p "$data"
for s in $SOURCES; do mkdir -p "$data$(dirname "$s")"; cp -a "$s" "$data$(dirname "$s")/"; done
# Hardlink groups, as a Mesa install has them: 12 large libraries linked 6 times each.
mkdir -p "$data/usr/lib/hl"
# (Lists are read whole: `find | head` would end find with SIGPIPE, fatal under pipefail.)
mapfile -t big < <(find "$data" -type f -size +1M)
for g in $(seq 0 11); do
  f=${big[$g]:-}; [ -n "$f" ] || break
  for k in 1 2 3 4 5 6; do ln "$f" "$data/usr/lib/hl/$g-$(basename "$f").$k"; done
done
# A 256 MiB disk image holding 40 MiB of real bytes, the rest holes.
mkdir -p "$data/var/lib/images" "$data/var/log"
img=$data/var/lib/images/disk.img
truncate -s 256M "$img"
mapfile -t bins < <(find /usr/bin -type f -size +200k)
for i in $(seq 0 39); do
  f=${bins[$i]:-}; [ -n "$f" ] || break
  dd if="$f" of="$img" bs=1M seek=$((i * 6)) count=1 conv=notrunc status=none
done
for l in syslog auth.log kern.log daemon.log; do
  for n in $(seq 1 20000); do echo "Dec  1 00:00:$((n % 60)) host $l[$n]: message $n of the day"; done > "$data/var/log/$l"
done
files=$(find "$data" | wc -l)
echo "data set: $(du -sh "$data" | cut -f1) allocated, $files entries"
for t in $tools; do
  case $t in
    restic) RESTIC_PASSWORD=bench restic -q -r "$W/restic" init >/dev/null ;;
    borg) borg init -e none "$W/borg" ;;
  esac
done

echo "== floors ($REPS times each)"
for i in $(seq 1 "$REPS"); do
  measure floor_walk find "$data" -printf '%s %T@ %i\n'
  measure floor_copy cp -a "$data" "$W/copy"
  rm -rf "$W/copy"
  # A copy that is on disk when it ends, as a point is: `cp -a` leaves its writes to the
  # kernel's flusher threads after it exits, a snapshot may not.
  measure floor_copy_sync sh -c "cp -a '$data' '$W/copy' && sync"
  rm -rf "$W/copy"
  measure floor_read sh -c "find '$data' -type f -print0 | xargs -0 cat > /dev/null"
done

echo "== point 0 and a run without changes"
for i in $(seq 1 "$REPS"); do
  for t in $tools; do
    repeated "$t" || [ "$i" = "$REPS" ] || continue
    # Each repetition starts from nothing; the last one's store goes on through the churn.
    [ "$i" = 1 ] || ! repeated "$t" || rm -rf "$(store_of "$t")"
    snapshot "$t" "${t}_first"
  done
done
for t in $tools; do echo "${t}_store0 0 0 $(size_of "$(store_of "$t")")" >> "$results"; done
for i in $(seq 1 "$REPS"); do
  for t in $tools; do
    if repeated "$t" || [ "$i" = "$REPS" ]; then snapshot "$t" "${t}_nochange"; fi
  done
done

churn() { # day: a package upgrade, log appends (rotation every third day), image block writes
  local day=$1 n=0
  RANDOM=$day
  # Package upgrade: 150 files rewritten as new inodes with a few changed bytes, 20 removed,
  # 20 added (as dpkg does: write aside, rename over).
  mapfile -t picked < <(find "$data" -path "$data/var" -prune -o -type f -size +1k -links 1 -print | shuf -n 190 --random-source=<(yes $day))
  for f in "${picked[@]:0:150}"; do
    cp -p "$f" "$f.dpkg-new"
    local size; size=$(stat -c %s "$f")
    for k in 1 2 3; do
      printf 'v%03d' "$day" | dd of="$f.dpkg-new" bs=1 seek=$(( (RANDOM * 32768 + RANDOM) % size )) conv=notrunc status=none
    done
    mv "$f.dpkg-new" "$f"; n=$((n + 1))
  done
  for f in "${picked[@]:150:20}"; do rm -f "$f"; done
  for f in "${picked[@]:170:20}"; do cp -p "$f" "$f.new$day" 2>/dev/null || true; done
  # Logs.
  for l in syslog auth.log kern.log daemon.log; do
    if [ $((day % 3)) = 0 ]; then
      [ -f "$data/var/log/$l.1" ] && gzip -f "$data/var/log/$l.1"
      mv "$data/var/log/$l" "$data/var/log/$l.1"
    fi
    for m in $(seq 1 3000); do echo "Dec $day 01:00:$((m % 60)) host $l[$m]: day $day message $m"; done >> "$data/var/log/$l"
  done
  # Ten 64 KiB block writes into the image.
  for k in $(seq 1 10); do
    dd if=/dev/urandom of="$img" bs=64k seek=$(( RANDOM % 4096 )) count=1 conv=notrunc status=none
  done
}

echo "== $DAYS days of churn (day 5 changes nothing)"
for day in $(seq 1 "$DAYS"); do
  [ "$day" = 5 ] || churn "$day"
  for t in $tools; do snapshot "$t" "${t}_day$day"; done
done
for t in $tools; do echo "${t}_storeN 0 0 $(size_of "$(store_of "$t")")" >> "$results"; done

echo "== restore of the latest point"
for i in $(seq 1 "$REPS"); do
  for t in $tools; do
    if repeated "$t" || [ "$i" = "$REPS" ]; then restore "$t" "${t}_restore"; fi
  done
done
if ! diff -r --no-dereference "$data" "$W/restored-rp" >/dev/null; then
  echo "FAILED: restorepoint's restore differs from the data set"; exit 1
fi

if [ $sparse = 1 ]; then
  echo "== 20 GiB sparse image, 700-byte edit"
  sp=$W/sparse; mkdir -p "$sp/img"; truncate -s 20G "$sp/img/disk.img"
  for k in 0 3 7 100 5000 12000 20000; do
    dd if=/dev/urandom of="$sp/img/disk.img" bs=1M count=30 seek=$k conv=notrunc status=none
  done
  measure sparse_rp_first "$rp/system_snapshot" --root "$sp" --source / --store "$W/sparse-store"
  printf '%0700d' 7 | dd of="$sp/img/disk.img" bs=1 seek=$((5000 * 1048576 + 12345)) conv=notrunc status=none
  measure sparse_rp_edit "$rp/system_snapshot" --root "$sp" --source / --store "$W/sparse-store"
  if have rsync; then
    measure sparse_rsync_first rsync -aHAXS "$sp/" "$W/sparse-mirror/"
    printf '%0700d' 8 | dd of="$sp/img/disk.img" bs=1 seek=$((5000 * 1048576 + 12345)) conv=notrunc status=none
    measure sparse_rsync_edit rsync -aHAXS --inplace "$sp/" "$W/sparse-mirror/"
  fi
  rm -rf "$sp" "$W/sparse-store" "$W/sparse-mirror"
fi

if [ $million = 1 ]; then
  echo "== 1,000,000 small files"
  m=$W/million; mkdir -p "$m"
  for d in $(seq 1 1000); do
    mkdir -p "$m/d$d"; (cd "$m/d$d" && for f in $(seq 1 1000); do echo "file $f of $d" > "f$f"; done)
  done
  measure m_walk find "$m" -printf '%s %T@ %i\n'
  measure m_copy cp -a "$m" "$W/m-copy"; rm -rf "$W/m-copy"
  measure m_rp_first "$rp/system_snapshot" --root "$m" --source / --store "$W/m-store"
  measure m_rp_nochange "$rp/system_snapshot" --root "$m" --source / --store "$W/m-store"
  measure m_rp_restore "$rp/system_restore" --store "$W/m-store" --point "$(latest "$W/m-store")" --target "$W/m-restored" --yes
  rm -rf "$m" "$W/m-store" "$W/m-restored"
fi

echo
echo "== figures (ratios; lower is better)"
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0 && a != "") printf "%.2f\n", a / b; else print "-" }'; }
median_busy() { # tool [get|cpu]: median of the busy days (every day but 5)
  for day in $(seq 1 "$DAYS"); do [ "$day" = 5 ] || "${2:-get}" "${1}_day$day"; done | median
}
rsync_busy=$(have rsync && median_busy rsync || echo "")
rsync_busy_cpu=$(have rsync && median_busy rsync cpu || echo "")
rsync_store0=$(get rsync_store0 4 || true)
printf '%-52s' "figure"; for t in $tools; do printf '%10s' "$t"; done; echo
row() { printf '%-52s' "$1"; shift; for v in "$@"; do printf '%10s' "$v"; done; echo; }
row "first snapshot / cp -a" $(for t in $tools; do ratio "$(get "${t}_first")" "$(get floor_copy)"; done)
row "first snapshot / (cp -a; sync)" $(for t in $tools; do ratio "$(get "${t}_first")" "$(get floor_copy_sync)"; done)
row "no-change snapshot / stat walk" $(for t in $tools; do ratio "$(get "${t}_nochange")" "$(get floor_walk)"; done)
row "median busy incremental / rsync mirror's" $(for t in $tools; do ratio "$(median_busy "$t")" "$rsync_busy"; done)
row "restore of the latest point / cp -a" $(for t in $tools; do ratio "$(get "${t}_restore")" "$(get floor_copy)"; done)
row "store after point 0 / rsync mirror's" $(for t in $tools; do ratio "$(get "${t}_store0" 4)" "$rsync_store0"; done)
row "history of $DAYS days (store growth, MB)" $(for t in $tools; do awk -v a="$(get "${t}_storeN" 4)" -v b="$(get "${t}_store0" 4)" 'BEGIN { printf "%.0f\n", (a - b) / 1e6 }'; done)
row "first snapshot / cp -a, CPU time" $(for t in $tools; do ratio "$(cpu "${t}_first")" "$(cpu floor_copy)"; done)
row "median busy incremental / rsync's, CPU time" $(for t in $tools; do ratio "$(median_busy "$t" cpu)" "$rsync_busy_cpu"; done)
row "peak RSS of a busy incremental (MiB)" $(for t in $tools; do echo $(( $(get "${t}_day1" 3) / 1024 )); done)
if [ $sparse = 1 ]; then
  echo "20 GiB sparse image, 700-byte edit: restorepoint $(get sparse_rp_edit) s (first $(get sparse_rp_first) s); rsync --inplace $(get sparse_rsync_edit) s"
fi
if [ $million = 1 ]; then
  echo "1 M files: first / cp -a $(ratio "$(get m_rp_first)" "$(get m_copy)"); no-change / stat walk $(ratio "$(get m_rp_nochange)" "$(get m_walk)"); restore / cp -a $(ratio "$(get m_rp_restore)" "$(get m_copy)"); peak RSS first $(( $(get m_rp_first 3) / 1024 )) MiB, restore $(( $(get m_rp_restore 3) / 1024 )) MiB"
fi
echo "raw results: $results"
