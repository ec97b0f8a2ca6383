#!/usr/bin/env bash
# Installs the Debian packages strata's tests and benchmarks use. Idempotent; needs root.
#   erofs-utils  mkfs.erofs / fsck.erofs / dump.erofs: the independent EROFS oracle
#   fuse3        fusermount3 and /etc/fuse.conf for the FUSE tiers
#   util-linux   losetup and mount for the kernel erofs oracle
#   python3      benchmark tree generators; the overlay's venv workload
#   git, attr    overlay workloads (git inside the mount) and xattr set-up in tests
#   acl          setfacl/getfacl: the overlay's default-ACL test
#   xfsprogs     xfs_io: the overlay's fallocate and passthrough (mapped write) tests
set -euo pipefail
PKGS=(erofs-utils fuse3 util-linux python3 python3-venv git attr acl xfsprogs)
APT=(apt-get -o DPkg::Lock::Timeout=300 -y -q)

missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "install-deps: need root to install: ${missing[*]}" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  # Package lists may be missing or stale on a fresh machine: update once if install fails.
  "${APT[@]}" install --no-install-recommends "${missing[@]}" \
    || { "${APT[@]}" update && "${APT[@]}" install --no-install-recommends "${missing[@]}"; }
fi
# The kernel oracles need erofs and loop; both may be modules (best effort: built-in is fine).
if [ "$(id -u)" -eq 0 ]; then
  modprobe erofs 2>/dev/null || true
  modprobe loop 2>/dev/null || true
fi
# pjdfstest switches to two unprivileged users whose primary groups carry their names:
# nobody/nogroup exists on Debian; "tests" is created here (as pjdfstest's README says).
if [ "$(id -u)" -eq 0 ] && ! id tests >/dev/null 2>&1; then
  useradd -U -M -s /usr/sbin/nologin -c "Dummy User for pjdfstest" tests
fi
echo "install-deps: ok (${PKGS[*]})"
