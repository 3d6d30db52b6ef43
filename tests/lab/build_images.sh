#!/usr/bin/env bash
# Build the lab's node images and its offline package mirror for one Debian suite (the argument; default
# DEBIAN_SUITE), cached outside the repository and keyed by the inputs that shape them (suite, package lists,
# this script). Prints the image directory.
#
#   rootfs/        Debian rootfs: systemd-nspawn nodes boot it through an overlay, qemu boots it as disk.img
#   disk.img       raw ext4 made from rootfs (the qemu worker's base disk; each lab run writes a qcow2 over it)
#   vmlinuz initrd the Debian kernel that the qemu worker boots directly
#                  (disk.img, vmlinuz and initrd only for DEBIAN_SUITE: the qemu worker runs that suite)
#   mirror/        offline Debian repository with the .debs the roles install (served on the lab bridge)
#
# Nothing lab-specific is baked in: each node gets a per-lab "seed" (tests/lab/lab_seed.py) mounted at
# /opt/kubeha-lab, and the image's kubeha-lab-seed.service runs its init script before sshd.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=tests/lab/versions.env
. "$here/versions.env"

suite=${1:-$DEBIAN_SUITE}
case $suite in
  "$DEBIAN_SUITE" | "$DEBIAN_SUITE_NEWER") ;;
  *) printf '[images] unknown suite %s: versions.env names %s and %s\n' "$suite" "$DEBIAN_SUITE" "$DEBIAN_SUITE_NEWER" >&2; exit 2 ;;
esac
with_kernel=$([[ $suite == "$DEBIAN_SUITE" ]] && echo 1 || echo 0)
cache=${KUBEHA_CACHE:-/var/cache/kubeha}
log() { printf '[images %s] %s\n' "$suite" "$*" >&2; }

# What every node has before the collection touches it (a minimal Debian server plus what the lab's own
# services use). Everything the roles install comes from mirror/ instead.
node_pkgs=systemd,systemd-sysv,dbus,openssh-server,python3,python3-apt,iproute2,kmod,iptables,ipset,ca-certificates,procps,less
# The container runtime a kubeadm node has before kubeadm runs (the kubeadm flavour starts it; the binary one never).
node_pkgs+=,containerd,runc,containernetworking-plugins
# What the roles install on nodes, served by the lab's mirror as a site mirror would.
mirror_pkgs=(haproxy ipvsadm conntrack python3-venv python3-pip nftables nginx-light libnginx-mod-stream socat curl)
# trixie has no nginx-light of its own (a transitional name): the bench's nginx comes from `nginx` there.
[[ $suite == bookworm ]] || mirror_pkgs=("${mirror_pkgs[@]/nginx-light/nginx}")

# Bump IMAGE_REV when this script's output changes in a way the package lists do not show.
IMAGE_REV=4
key=$( { echo "$IMAGE_REV $suite"; echo "$node_pkgs ${mirror_pkgs[*]} "; } | sha256sum | cut -c1-12)
out="$cache/images/$suite-$key"
if [[ -f $out/.complete ]]; then
  echo "$out"
  exit 0
fi

# The Debian mirror this machine's apt already uses (the lab never names one of its own).
mirror_url=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
[[ -n $mirror_url ]] || mirror_url=$(awk '$1=="deb" && $0 !~ /security/ {print $2; exit}' /etc/apt/sources.list)
[[ -n $mirror_url ]] || { log "cannot find the Debian mirror in this machine's apt sources"; exit 1; }

work="$out.tmp"
rm -rf "$work"
mkdir -p "$work"
rootfs="$work/rootfs"

start=$SECONDS
log "debootstrap (about a minute)"
debootstrap --variant=minbase --include="$node_pkgs" "$suite" "$rootfs" "$mirror_url" >"$work/debootstrap.log" 2>&1 \
  || { tail -20 "$work/debootstrap.log" >&2; exit 1; }

in_root() { chroot "$rootfs" env DEBIAN_FRONTEND=noninteractive LC_ALL=C "$@"; }
mount -t proc proc "$rootfs/proc"
trap 'umount "$rootfs/proc" 2>/dev/null || true' EXIT

if ((with_kernel)); then
  log "kernel for the qemu worker (about a minute)"
  in_root apt-get install -y -qq --no-install-recommends linux-image-amd64 initramfs-tools >"$work/kernel.log" 2>&1 \
    || { tail -20 "$work/kernel.log" >&2; exit 1; }
fi

log "offline mirror: ${mirror_pkgs[*]}"
mkdir -p "$work/mirror"
in_root apt-get install -y -qq --no-install-recommends --download-only "${mirror_pkgs[@]}" >"$work/mirror.log" 2>&1 \
  || { tail -20 "$work/mirror.log" >&2; exit 1; }
mv "$rootfs"/var/cache/apt/archives/*.deb "$work/mirror/"
(cd "$work/mirror" && dpkg-scanpackages --multiversion . /dev/null 2>/dev/null >Packages && gzip -9k Packages)
in_root apt-get clean
umount "$rootfs/proc"
trap - EXIT

log "configuring the node image"
# Air-gapped like a site without internet: apt sees only the site mirror the seed names.
rm -f "$rootfs"/etc/apt/sources.list "$rootfs"/etc/apt/sources.list.d/*
rm -rf "$rootfs"/var/lib/apt/lists/*
: >"$rootfs/etc/machine-id"
echo 'LANG=C.UTF-8' >"$rootfs/etc/default/locale"
# qemu nodes: the root disk and the seed disk; nspawn nodes get the seed as a bind mount instead.
printf '/dev/vda / ext4 rw,relatime 0 1\nLABEL=kubeha-seed /opt/kubeha-lab ext4 ro,nofail,x-systemd.device-timeout=120s 0 0\n' \
  >"$rootfs/etc/fstab"
install -d "$rootfs/opt/kubeha-lab"
cat >"$rootfs/etc/systemd/system/kubeha-lab-seed.service" <<'UNIT'
[Unit]
Description=kubeha lab: apply this node's seed (identity, keys, site mirror, lab services)
DefaultDependencies=no
RequiresMountsFor=/opt/kubeha-lab
After=local-fs.target
Before=ssh.service network.target
ConditionPathExists=/opt/kubeha-lab/init

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/opt/kubeha-lab/init

[Install]
WantedBy=multi-user.target
UNIT
ln -sf /etc/systemd/system/kubeha-lab-seed.service \
  "$rootfs/etc/systemd/system/multi-user.target.wants/kubeha-lab-seed.service"
# containerd is started by the kubeadm flavour's seed only.
rm -f "$rootfs/etc/systemd/system/multi-user.target.wants/containerd.service"
# Nothing on a lab node should wake up on its own and compete for the two cores.
for unit in apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer fstrim.timer man-db.timer dpkg-db-backup.timer; do
  ln -sf /dev/null "$rootfs/etc/systemd/system/$unit"
done
ln -sf /lib/systemd/system/serial-getty@.service "$rootfs/etc/systemd/system/getty.target.wants/serial-getty@ttyS0.service"
sed -i 's/^#\?UseDNS.*/UseDNS no/' "$rootfs/etc/ssh/sshd_config"
rm -f "$rootfs"/etc/ssh/ssh_host_*  # made per node by the seed's init
if ((with_kernel)); then
  cp "$rootfs"/boot/vmlinuz-* "$work/vmlinuz"
  cp "$rootfs"/boot/initrd.img-* "$work/initrd"
  log "guest disk (ext4 from the rootfs, no loop device)"
  mkfs.ext4 -q -L kubeha-root -d "$rootfs" "$work/disk.img" 3G
fi

touch "$work/.complete"
rm -rf "$out"
mv "$work" "$out"
log "images ready in $((SECONDS - start)) s"
echo "$out"
