# Shared by the end-to-end scripts (sourced): root, tools, the release build, loop devices
# and mounts undone on exit, QEMU boots that print the machine's report line, and the Debian
# 12 image (debootstrap, kernel, GRUB by hand) built once into E2E_CACHE.
[ "$(id -u)" = 0 ] || { echo "run as root: loop devices, mounts, debootstrap" >&2; exit 2; }
cd "${E2E_REPO:-$(dirname "$0")/../..}"
W=${E2E_DIR:-/var/tmp/rp-e2e}
CACHE=${E2E_CACHE:-/var/cache/restorepoint-e2e}
SIZE=3G
need=(${E2E_NEED:-} debootstrap qemu-system-x86 grub-pc-bin e2fsprogs fdisk mount util-linux)
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
boot() { # image log [more disk images, attached after it as vdb, vdc …]
  local img=$1 log=$2 drives=()
  shift 2
  for d in "$img" "$@"; do drives+=(-drive "file=$d,format=raw,if=virtio"); done
  timeout "${E2E_TIMEOUT:-1800}" qemu-system-x86_64 -accel "$accel" -m 1024 -smp 2 -nographic -no-reboot -net none \
    "${drives[@]}" </dev/null >"$log" 2>&1 || true
  grep -a -o 'RP-REPORT [^[:cntrl:]]*' "$log" | tail -1
}

mkdir -p "$W" "$CACHE"
base=$CACHE/debian-bookworm.img
base_image() {
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
}
