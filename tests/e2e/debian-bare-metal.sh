#!/usr/bin/env bash
# Issue 11's end-to-end check, on real Debian: a bookworm system on a disk image (debootstrap,
# the Debian kernel, GRUB) boots in QEMU and reports its kernel and `dpkg -l`; a point of it is
# taken into a store on a second disk image and pushed to a local S3 server (Garage, when
# installed; else a file:// remote); a third, blank image of the same size gets
# `system_restore --bare-metal` from the second disk, a fourth from the remote; both boot and
# must report what the original did.
#
# Root, QEMU, network to deb.debian.org the first
# time: the Debian image is built once and kept in E2E_CACHE (default
# /var/cache/restorepoint-e2e). Usage: tests/e2e/debian-bare-metal.sh   (exit 0: all passed)
set -euo pipefail
. "$(dirname "$0")/lib.sh"
base_image

rm -rf "$W/run"; mkdir -p "$W/run"; R=$W/run
# This run's own list of stores made on other disks: the previous run's backup disk, made
# again blank, would otherwise be refused as a store that went missing.
export RESTOREPOINT_STATE_DIR=$R/state
cp --sparse=always "$base" "$R/machine.img"
echo "== booting the original ($accel)"
orig=$(boot "$R/machine.img" "$R/boot-original.log")
echo "original: $orig"
[ -n "$orig" ] || { echo "FAILED: the original did not report (see $R/boot-original.log)"; exit 1; }

echo "== a point of it, its store on a second disk, pushed off site"
truncate -s 4G "$R/backup.img"; mkfs.ext4 -q -F -L rp-backup "$R/backup.img"
mnt "$R/backup.img" "$R/backup"
attach "$R/machine.img"; L=$LOOP
mnt "${L}p1" "$R/sys"
printf '[boot]\ndevice = "%s"\n' "$L" > "$R/rp.conf"
"$rp/system_snapshot" -c "$R/rp.conf" --root "$R/sys" --store "$R/backup/rp" --label e2e
url=file://$R/offsite
export AWS_ACCESS_KEY_ID=GK0123456789abcdef01234567
export AWS_SECRET_ACCESS_KEY=0000000000000000000000000000000000000000000000000000000000000042
export AWS_REGION=garage AWS_ENDPOINT_URL=http://127.0.0.1:20900
garage=$(command -v garage || echo "$HOME/.cargo/bin/garage")
if [ -x "$garage" ]; then
  mkdir -p "$R/garage"
  cat > "$R/garage/garage.toml" <<EOF
metadata_dir = "$R/garage/meta"
data_dir = "$R/garage/data"
db_engine = "sqlite"
replication_factor = 1
rpc_bind_addr = "127.0.0.1:20901"
rpc_public_addr = "127.0.0.1:20901"
rpc_secret = "$(printf '%064d' 7)"
[s3_api]
api_bind_addr = "127.0.0.1:20900"
s3_region = "garage"
EOF
  GARAGE_DEFAULT_ACCESS_KEY=$AWS_ACCESS_KEY_ID GARAGE_DEFAULT_SECRET_KEY=$AWS_SECRET_ACCESS_KEY \
    GARAGE_DEFAULT_BUCKET=restorepoint "$garage" -c "$R/garage/garage.toml" server --single-node \
    --default-bucket >"$R/garage/log" 2>&1 &
  garage_pid=$!
  for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/20900) 2>/dev/null && break; sleep 0.1; done
  sleep 1
  url=s3://restorepoint/e2e
fi
"$rp/system_snapshot" push --store "$R/backup/rp" --to "$url"
"$rp/system_snapshot" list --store "$url"
unmnt "$R/sys"; detach "$L"

for from in disk remote; do
  img=$R/blank-$from.img
  truncate -s "$SIZE" "$img"
  store=$R/backup/rp; [ $from = remote ] && store=$url
  echo "== bare-metal restore from the $from onto a blank disk"
  t0=$SECONDS
  "$rp/system_restore" --store "$store" --point 1 --bare-metal --device "$img" --yes
  echo "(the bare-metal restore from the $from took $((SECONDS - t0)) s)"
  got=$(boot "$img" "$R/boot-$from.log")
  echo "from the $from: $got"
  if [ "$got" != "$orig" ]; then
    echo "FAILED: the disk rebuilt from the $from reports '$got', the original '$orig' (see $R/boot-$from.log)"
    exit 1
  fi
done
echo "PASSED: both rebuilt disks boot and report the original's kernel, packages and root"
