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
[ "$(id -u)" = 0 ] || { echo "run as root: loop devices, mounts, debootstrap" >&2; exit 2; }
cd "${E2E_REPO:-$(dirname "$0")/../..}"
W=${E2E_DIR:-/var/tmp/rp-e2e}
CACHE=${E2E_CACHE:-/var/cache/restorepoint-e2e}
SIZE=3G
need=(debootstrap qemu-system-x86 grub-pc-bin e2fsprogs fdisk mount util-linux)
missing=()
for p in "${need[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >/dev/null
fi
cargo build --release -q
rp=$PWD/target/release

loops=() mounts=() garage_pid=
cleanup() {
  set +e
  for ((i = ${#mounts[@]} - 1; i >= 0; i--)); do umount "${mounts[$i]}" 2>/dev/null; done
  for l in "${loops[@]}"; do partx -d "$l" 2>/dev/null; losetup -d "$l" 2>/dev/null; done
  [ -n "$garage_pid" ] && kill "$garage_pid" 2>/dev/null
}
trap cleanup EXIT
attach() { # image: LOOP becomes its loop device, with partition nodes
  LOOP=$(losetup -f --show "$1"); loops+=("$LOOP")
  partx -a "$LOOP" 2>/dev/null || true
  for _ in $(seq 50); do [ -e "${LOOP}p1" ] && break; sleep 0.1; done
}
detach() { partx -d "$1" 2>/dev/null || true; losetup -d "$1"; }
mnt() { mkdir -p "$2"; mount "$1" "$2"; mounts+=("$2"); }
unmnt() { umount "$1"; }

# QEMU with TCG unless E2E_ACCEL says otherwise: on a nested VM, KVM runs the BIOS and GRUB's
# real-mode disk reads so slowly that loading the kernel takes many minutes; TCG boots Debian
# to its report in about a minute. Prints the report line the machine writes to its serial
# console before it powers off.
accel=${E2E_ACCEL:-tcg}
boot() { # image log
  timeout 900 qemu-system-x86_64 -accel "$accel" -m 1024 -smp 2 -nographic -no-reboot -net none \
    -drive "file=$1,format=raw,if=virtio" </dev/null >"$2" 2>&1 || true
  grep -a -o 'RP-REPORT [^[:cntrl:]]*' "$2" | tail -1
}

mkdir -p "$W" "$CACHE"
base=$CACHE/debian-bookworm.img
if [ ! -f "$base" ]; then
  echo "== building the Debian image (once; kept in $base)"
  rm -f "$base.tmp"; truncate -s "$SIZE" "$base.tmp"
  printf 'label: dos\nstart=2048, size=2560MiB, type=83, bootable\ntype=82\n' | sfdisk -q "$base.tmp"
  attach "$base.tmp"; L=$LOOP
  mkfs.ext4 -q -L debian-root "${L}p1"; mkswap -L debian-swap "${L}p2" >/dev/null
  m=$W/build; mnt "${L}p1" "$m"
  debootstrap --variant=minbase \
    --include=linux-image-amd64,systemd-sysv,udev,kmod,initramfs-tools,e2fsprogs,procps \
    bookworm "$m" http://deb.debian.org/debian
  uuid=$(blkid -s UUID -o value "${L}p1"); swap=$(blkid -s UUID -o value "${L}p2")
  printf 'UUID=%s / ext4 errors=remount-ro 0 1\nUUID=%s none swap sw 0 0\n' "$uuid" "$swap" > "$m/etc/fstab"
  echo e2e-machine > "$m/etc/hostname"
  cat > "$m/usr/local/sbin/rp-report" <<'EOF'
#!/bin/sh
echo "RP-REPORT kernel=$(uname -r) dpkg=$(dpkg -l | md5sum | cut -c1-32) root=$(findmnt -no UUID /) host=$(hostname)" > /dev/ttyS0
systemctl poweroff
EOF
  chmod 755 "$m/usr/local/sbin/rp-report"
  cat > "$m/etc/systemd/system/rp-report.service" <<'EOF'
[Unit]
Description=Report kernel and packages for the restorepoint end-to-end test
After=multi-user.target
[Service]
Type=oneshot
ExecStart=/usr/local/sbin/rp-report
[Install]
WantedBy=multi-user.target
EOF
  ln -sf /etc/systemd/system/rp-report.service "$m/etc/systemd/system/multi-user.target.wants/rp-report.service"
  # GRUB by hand (grub-install cannot probe a loop device): boot.img's code in sector 0, a
  # core image in the MBR gap, the modules and grub.cfg in /boot/grub.
  mkdir -p "$m/boot/grub/i386-pc"
  cp /usr/lib/grub/i386-pc/*.mod /usr/lib/grub/i386-pc/*.lst "$m/boot/grub/i386-pc/"
  printf 'set timeout=0\nlinux /vmlinuz root=UUID=%s ro console=ttyS0\ninitrd /initrd.img\nboot\n' "$uuid" > "$m/boot/grub/grub.cfg"
  grub-mkimage -O i386-pc -o "$W/core.img" -p '(hd0,msdos1)/boot/grub' \
    biosdisk part_msdos ext2 normal linux configfile echo
  umount "$m"; mounts=("${mounts[@]/$m}")
  detach "$L"; loops=()
  dd if=/usr/lib/grub/i386-pc/boot.img of="$base.tmp" bs=440 count=1 conv=notrunc status=none
  dd if="$W/core.img" of="$base.tmp" bs=512 seek=1 conv=notrunc status=none
  mv "$base.tmp" "$base"
fi

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
