#!/usr/bin/env bash
# Issue 11's LVM check, on real Debian with a real device-mapper (this machine's kernel may
# have none, so the LVM work runs inside a QEMU guest): a bookworm system with `/` on LVM
# (a volume group on a partition: ext4 root, xfs /srv, swap; /boot ext2 beside it; GRUB;
# an initramfs that activates the group) boots and reports its kernel, `dpkg -l`, the
# UUIDs of every filesystem and volume, and a hash of /srv's files and metadata. A point of
# it goes into a store on a second disk; with the old disk attached, a bare-metal restore is
# refused (same volume group twice); without it, a blank disk is rebuilt from the store
# (partitions, `pvcreate --restorefile`, `vgcfgrestore`, filesystems, files, boot code), and
# the rebuilt disk boots alone and must report what the original did.
#
# Root, QEMU, network to deb.debian.org the first time (the images are kept in E2E_CACHE).
# Usage: tests/e2e/lvm-bare-metal.sh   (exit 0: all passed; about 15 minutes under TCG)
set -euo pipefail
. "$(dirname "$0")/lib.sh"
base_image

worker=$CACHE/debian-bookworm-lvm-worker.img
if [ ! -f "$worker" ]; then
  echo "== building the worker image (once; kept in $worker)"
  cp --sparse=always "$base" "$worker.tmp"
  attach "$worker.tmp"; L=$LOOP
  m=$W/worker; mnt "${L}p1" "$m"
  for d in dev proc sys; do mount --bind "/$d" "$m/$d"; mounts+=("$m/$d"); done
  chroot "$m" sh -c 'apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends lvm2 fdisk xfsprogs grub-pc-bin grub2-common >/dev/null'
  for d in sys proc dev; do umount "$m/$d"; done
  umount "$m"; detach "$L"; loops=(); mounts=()
  mv "$worker.tmp" "$worker"
fi

rm -rf "$W/lvm"; mkdir -p "$W/lvm"; R=$W/lvm
cp --sparse=always "$worker" "$R/worker.img"
truncate -s 4G "$R/machine.img" "$R/blank.img" "$R/other-blank.img"
truncate -s 6G "$R/store.img"; mkfs.ext4 -q -F -L rp-store "$R/store.img"

work() { # step script: installs it (and the binaries) as the worker's rp-work
  attach "$R/worker.img"; local L=$LOOP
  mnt "${L}p1" "$R/w"
  cp -L "$R/w/vmlinuz" "$R/worker-kernel"; cp -L "$R/w/initrd.img" "$R/worker-initrd"
  install -m 755 "$rp/system_snapshot" "$rp/system_restore" "$R/w/usr/local/sbin/"
  install -m 755 "$1" "$R/w/usr/local/sbin/rp-work"
  # The worker runs the step, then says how it went and powers off. No getty on its serial
  # console: one starting there hangs the line up, and the step's next write to it fails
  # (EIO), which would fail the step at a random line.
  cat > "$R/w/usr/local/sbin/rp-report" <<'EOF'
#!/bin/sh
if /usr/local/sbin/rp-work > /dev/ttyS0 2>&1; then r=ok; else r=FAILED; fi
echo "RP-REPORT work=$r" > /dev/ttyS0
systemctl poweroff
EOF
  ln -sf /dev/null "$R/w/etc/systemd/system/serial-getty@ttyS0.service"
  umount "$R/w"; detach "$L"; loops=(); mounts=()
}

cat > "$R/build" <<'EOF'
#!/bin/sh
# In the worker: the LVM machine on /dev/vdb, a point of it into the store on /dev/vdc.
set -eux
export PATH=/usr/local/sbin:/usr/sbin:/sbin:/usr/bin:/bin
D=/dev/vdb m=/mnt/sys
# udev makes the nodes in its own time (and settle may time out while the guest boots).
node() { for _ in $(seq 150); do [ -e "$1" ] && return 0; sleep 0.2; done; echo "no $1"; return 1; }
printf 'label: dos\nlabel-id: 0x5e1f0001\nstart=2048, size=256MiB, type=83, bootable\ntype=8e\n' | sfdisk -q $D
udevadm settle || true
node ${D}1; node ${D}2
mkfs.ext2 -q -L lvboot ${D}1
pvcreate -y ${D}2 2>&1
vgcreate rp-vg ${D}2 2>&1
lvcreate -q -y -L 2500M -n root rp-vg
lvcreate -q -y -L 128M -n my-swap rp-vg
lvcreate -q -y -l 100%FREE -n srv rp-vg
udevadm settle || true
node /dev/rp-vg/root; node /dev/rp-vg/my-swap; node /dev/rp-vg/srv
mkfs.ext4 -q -L lvroot /dev/rp-vg/root
mkswap -L lvswap /dev/rp-vg/my-swap
mkfs.xfs -q -L srv /dev/rp-vg/srv
mkdir -p $m; mount /dev/rp-vg/root $m
mkdir -p $m/boot $m/srv; mount ${D}1 $m/boot; mount /dev/rp-vg/srv $m/srv
# The worker's system, less what a machine that boots and reports needs none of (documents,
# translations, apt's lists, drivers for hardware QEMU does not have): the copying, hashing
# and compressing under TCG is what this test spends its time on.
tar -C / --one-file-system --exclude=./usr/share/doc --exclude=./usr/share/man \
  --exclude=./usr/share/locale --exclude=./var/lib/apt/lists --exclude=./var/cache/apt \
  --exclude='./usr/lib/modules/*/kernel/drivers/gpu' --exclude='./usr/lib/modules/*/kernel/drivers/net/wireless' \
  --exclude='./usr/lib/modules/*/kernel/drivers/media' --exclude='./usr/lib/modules/*/kernel/drivers/infiniband' \
  --exclude='./usr/lib/modules/*/kernel/sound' --exclude='./usr/lib/modules/*/kernel/drivers/staging' \
  -cf - . | tar -C $m -xpf -
rm -f $m/usr/local/sbin/rp-work $m/usr/local/sbin/system_snapshot $m/usr/local/sbin/system_restore
echo lvm-machine > $m/etc/hostname
mkdir -p $m/srv/data/deep/er
head -c 3000000 /dev/urandom > $m/srv/data/blob
echo hello > $m/srv/data/hello.txt; ln $m/srv/data/hello.txt $m/srv/data/deep/er/hello-link
ln -s ../blob $m/srv/data/deep/blob-link; chmod 640 $m/srv/data/blob; chown 1000:1000 $m/srv/data/deep
touch -d '2001-02-03 04:05:06.789' $m/srv/data/hello.txt
cat > $m/etc/fstab <<FSTAB
/dev/mapper/rp--vg-root / ext4 errors=remount-ro 0 1
LABEL=lvboot /boot ext2 defaults 0 2
UUID=$(blkid -s UUID -o value /dev/rp-vg/srv) /srv xfs defaults 0 2
/dev/rp-vg/my-swap none swap sw 0 0
FSTAB
cat > $m/usr/local/sbin/rp-report <<'REPORT'
#!/bin/sh
u() { findmnt -no SOURCE,UUID "$1" | tr ' ' ,; }
echo "RP-REPORT kernel=$(uname -r) dpkg=$(dpkg -l | md5sum | cut -c1-12) root=$(u /) boot=$(u /boot) srv=$(u /srv) swap=$(swapon --show=UUID --noheadings | tr -d ' ') lvm=$(lvs --noheadings -o vg_uuid,lv_uuid,lv_name,lv_size --units b | sort | md5sum | cut -c1-12) pv=$(pvs --noheadings -o pv_uuid,pv_name | tr -s ' ' ,) files=$(cd /srv && find . -printf '%p %m %U %G %n %s %T@ %l\n' | sort | md5sum | cut -c1-12)/$(cd /srv && find . -type f -exec md5sum {} + | sort | md5sum | cut -c1-12) host=$(hostname)" > /dev/ttyS0
systemctl poweroff
REPORT
# The initramfs (made when lvm2 was installed in the worker) already holds lvm, dm-mod and the
# udev rules that activate a volume group as its physical volume appears: the root on LVM is
# found without making it again (which takes a quarter of an hour under TCG).
lsinitramfs $m/boot/initrd.img-* | grep -q 'sbin/lvm' || { echo "the initramfs has no lvm"; exit 1; }
grub-install --target=i386-pc --boot-directory=$m/boot $D
k=$(ls $m/boot | sed -n 's/^vmlinuz-//p' | head -1)
printf 'set timeout=0\nlinux /vmlinuz-%s root=/dev/mapper/rp--vg-root ro console=ttyS0\ninitrd /initrd.img-%s\nboot\n' $k $k > $m/boot/grub/grub.cfg
mkdir -p /mnt/store; mount LABEL=rp-store /mnt/store
printf '[boot]\ndevice = "/dev/vdb"\n' > /tmp/rp.conf
system_snapshot -c /tmp/rp.conf --root $m --source / --source /boot --source /srv --store /mnt/store/rp --label lvm
system_snapshot list --store /mnt/store/rp
# The old disk is still attached: its volume group would be there twice.
set +e
out=$(system_restore --store /mnt/store/rp --point latest --bare-metal --device /dev/vdd --yes 2>&1)
rc=$?
set -e
echo "$out"
[ $rc = 7 ] && echo "$out" | grep -q 'already has a volume group rp-vg' || { echo "expected a refusal (7), got $rc"; exit 1; }
blkid /dev/vdd && { echo "the refused restore wrote to /dev/vdd"; exit 1; }
umount $m/srv $m/boot $m /mnt/store
vgchange -an rp-vg
sync
EOF

cat > "$R/rebuild" <<'EOF'
#!/bin/sh
# In the worker, without the old disk: the store on /dev/vdb, a blank disk on /dev/vdc.
set -eux
export PATH=/usr/local/sbin:/usr/sbin:/sbin:/usr/bin:/bin
mkdir -p /mnt/store; mount LABEL=rp-store /mnt/store
system_restore --store /mnt/store/rp --point latest --bare-metal --device /dev/vdc --dry-run
system_restore --store /mnt/store/rp --point latest --bare-metal --device /dev/vdc --yes
lvs -o vg_name,lv_name,lv_uuid,lv_active
umount /mnt/store
sync
EOF

# The worker needs no boot loader of its own: its kernel is started directly (under TCG, as
# the machines: on a nested VM, KVM runs the real-mode start of a kernel so slowly that it
# never gets going).
worker_accel=${E2E_WORKER_ACCEL:-$accel}
step() { # name script disks…: runs a step in the worker, fails the test when it did
  local name=$1 script=$2 drives=(); shift 2
  echo "== $name (worker, $worker_accel)"
  work "$script"
  for d in "$R/worker.img" "$@"; do drives+=(-drive "file=$d,format=raw,if=virtio"); done
  timeout "${E2E_TIMEOUT:-3600}" qemu-system-x86_64 -accel "$worker_accel" -m 2048 -smp 2 \
    -nographic -no-reboot -net none -kernel "$R/worker-kernel" -initrd "$R/worker-initrd" \
    -append "root=/dev/vda1 ro console=ttyS0 edd=off" "${drives[@]}" </dev/null >"$R/$name.log" 2>&1 || true
  local got; got=$(grep -a -o 'RP-REPORT [^[:cntrl:]]*' "$R/$name.log" | tail -1)
  if [ "$got" != "RP-REPORT work=ok" ]; then
    echo "FAILED: $name: '${got:-no report}' (see $R/$name.log)"; tail -40 "$R/$name.log"; exit 1
  fi
}
step build "$R/build" "$R/machine.img" "$R/store.img" "$R/other-blank.img"
echo "== booting the LVM machine"
orig=$(boot "$R/machine.img" "$R/boot-original.log")
echo "original: $orig"
case "$orig" in *root=/dev/mapper/rp--vg-root,*) ;; *) echo "FAILED: the original did not boot from LVM (see $R/boot-original.log)"; exit 1 ;; esac
step rebuild "$R/rebuild" "$R/store.img" "$R/blank.img"
grep -a -E '^\[|Volume group|mounted on|FAILED' "$R/rebuild.log" | head -40
echo "== booting the rebuilt disk"
got=$(boot "$R/blank.img" "$R/boot-rebuilt.log")
echo "rebuilt:  $got"
if [ "$got" != "$orig" ]; then
  echo "FAILED: the rebuilt disk reports '$got', the original '$orig' (see $R/boot-rebuilt.log)"
  exit 1
fi
echo "PASSED: the disk rebuilt with its volume group boots and reports the original's kernel, packages, filesystems, volumes and files"
