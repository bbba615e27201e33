#!/usr/bin/env bash
# Installs, upgrades, removes and purges the amd64 peercam package in a throwaway Debian
# 12 (bookworm, minbase) root made by debootstrap, and checks what the package promises:
# the peercam system user in the video, gpio and audio groups, /var/lib/peercam, the
# conffile /etc/peercam/peercam.toml (and that a local edit survives an upgrade), the
# units, a binary that runs, and that purge takes the user, /etc/peercam and
# /var/lib/peercam away. Run by tools/package-check; needs root (chroot, mount).
#
# Cached under target/package-check/: the debootstrapped root (base/) and the .debs apt
# fetched for it (archives/), so a second run downloads nothing. Prints PASS/FAIL lines
# and ends with "N passed, N failed".
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT_DIR="$PWD"
. tools/cross.sh

start=$SECONDS
work="$ROOT_DIR/target/package-check"
base="$work/base"
root="$work/root"
archives="$work/archives"
debs="$work/debs"
mkdir -p "$work" "$archives" "$debs"

[ "$(id -u)" -eq 0 ] || { echo "install-check: needs root (debootstrap, chroot, mount)" >&2; exit 1; }
cross_apt_install debootstrap dpkg-dev

passed=0 failed=0
pass() { printf 'PASS %s\n' "$*"; passed=$((passed + 1)); }
fail() { printf 'FAIL %s\n' "$*"; failed=$((failed + 1)); }
check() { # check "what" command...
  local what="$1"
  shift
  if "$@" >/dev/null 2>&1; then pass "$what"; else fail "$what"; fi
}
in_root() { chroot "$root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 DEBIAN_FRONTEND=noninteractive "$@"; }

# --- the packages: this version and a bumped one, from the same native release build ---
version="$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n1)"
v1="$version-1"
v2="$version-2"
rm -f "$debs"/*.deb
tools/package --output "$debs" amd64 >/dev/null
tools/package --output "$debs" --deb-version "$v2" amd64 >/dev/null
deb1="$debs/peercam_${v1}_amd64.deb"
deb2="$debs/peercam_${v2}_amd64.deb"
if [ ! -f "$deb1" ] || [ ! -f "$deb2" ]; then
  echo "install-check: the packages were not built" >&2
  exit 1
fi

# --- a bookworm minbase root from the mirror apt uses here (debootstrapped once) ---
mirror="$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.sources /etc/apt/sources.list.d/*.list 2>/dev/null |
  grep -E '^(URIs:|deb )' | grep -v security | grep -oE 'https?://[^ ]*debian[^ ]*' | head -n1 || true)"
mirror="${mirror:-http://deb.debian.org/debian}"
if [ ! -x "$base/usr/bin/apt-get" ]; then
  rm -rf --one-file-system "$base"
  echo "install-check: debootstrap --variant=minbase bookworm from $mirror (once; cached in ${base#"$ROOT_DIR"/})" >&2
  t=$SECONDS
  debootstrap --variant=minbase bookworm "$base.tmp" "$mirror" >"$work/debootstrap.log" 2>&1 || {
    tail -n 20 "$work/debootstrap.log" >&2
    echo "install-check: debootstrap failed (log: $work/debootstrap.log)" >&2
    exit 1
  }
  rm -rf "$base.tmp/var/cache/apt/archives/"*.deb
  mv "$base.tmp" "$base"
  echo "install-check: debootstrap took $((SECONDS - t)) s" >&2
fi

cleanup() {
  for m in "$root/var/cache/apt/archives" "$root/proc"; do
    mountpoint -q "$m" 2>/dev/null && umount -l "$m"
  done
  rm -rf --one-file-system "$root"
}
trap cleanup EXIT
cleanup
cp -a "$base" "$root"
mount -t proc proc "$root/proc"
mount --bind "$archives" "$root/var/cache/apt/archives"
cp /etc/resolv.conf "$root/etc/resolv.conf"
# No service starts in here (there is no systemd running either).
printf '#!/bin/sh\nexit 101\n' >"$root/usr/sbin/policy-rc.d"
chmod 755 "$root/usr/sbin/policy-rc.d"
cp "$deb1" "$deb2" "$root/tmp/"

# --- install: apt-get pulls the Depends (GStreamer and its plugins) from the mirror ---
t=$SECONDS
in_root apt-get update -qq >/dev/null 2>&1 || echo "install-check: warning: apt-get update in the root reported errors" >&2
if in_root apt-get install -y -qq --no-install-recommends "/tmp/${deb1##*/}" >"$work/install.log" 2>&1; then
  pass "apt-get install ./${deb1##*/} (with its Depends from the mirror, $((SECONDS - t)) s)"
else
  fail "apt-get install ./${deb1##*/} (log: ${work#"$ROOT_DIR"/}/install.log)"
  tail -n 20 "$work/install.log"
fi
check "package installed at $v1" test "$(in_root dpkg-query -W -f='${Version}' peercam)" = "$v1"
check "peercam is a system user with home /var/lib/peercam and no login shell" \
  bash -c "in_root() { chroot '$root' \"\$@\"; }; e=\$(in_root getent passwd peercam); IFS=: read -r _ _ uid _ _ home shell <<<\"\$e\"; [ \$uid -lt 1000 ] && [ \$home = /var/lib/peercam ] && [[ \$shell == */nologin || \$shell == */false ]]"
groups="$(in_root id -nG peercam 2>/dev/null || true)"
for g in video gpio audio; do
  check "peercam is in group $g" grep -qw "$g" <<<"$groups"
done
check "/var/lib/peercam exists, owned by peercam" test "$(in_root stat -c %U:%G /var/lib/peercam 2>/dev/null)" = peercam:peercam
check "/etc/peercam/peercam.toml exists" test -f "$root/etc/peercam/peercam.toml"
check "/etc/peercam/peercam.toml is a conffile" grep -q /etc/peercam/peercam.toml <<<"$(in_root dpkg-query -W -f='${Conffiles}' peercam)"
check "/usr/share/peercam/boards/rpi4.toml exists" test -f "$root/usr/share/peercam/boards/rpi4.toml"
check "/usr/share/doc/peercam/README.md and docs/install.md exist" test -f "$root/usr/share/doc/peercam/README.md" -a -f "$root/usr/share/doc/peercam/docs/install.md"
check "the units are in /lib/systemd/system" test -f "$root/lib/systemd/system/peercam.service" -a -f "$root/lib/systemd/system/peercam-phonebook.service"
out="$(in_root peercam --version 2>&1 || true)"
check "peercam --version runs in the root: $out" test "$out" = "peercam $version"
check "the shipped config loads (peercam devices --config /etc/peercam/peercam.toml)" in_root peercam devices --config /etc/peercam/peercam.toml
sed 's/^#\([a-z0-9_]* =\)/\1/' "$root/etc/peercam/peercam.toml" >"$root/tmp/all-keys.toml"
check "the shipped config with every key uncommented loads too" in_root peercam devices --config /tmp/all-keys.toml

# --- upgrade over a locally edited config ---
sed -i 's/^#board = "dev"$/board = "usb-webcam"/; s/^#max_viewers = 4$/max_viewers = 2/' "$root/etc/peercam/peercam.toml"
edited="$(sha256sum <"$root/etc/peercam/peercam.toml")"
check "the local edit is in place" grep -qx 'board = "usb-webcam"' "$root/etc/peercam/peercam.toml"
if in_root apt-get install -y -qq --no-install-recommends "/tmp/${deb2##*/}" >"$work/upgrade.log" 2>&1; then
  pass "upgrade to $v2 (apt-get install ./${deb2##*/})"
else
  fail "upgrade to $v2 (log: ${work#"$ROOT_DIR"/}/upgrade.log)"
  tail -n 20 "$work/upgrade.log"
fi
check "package installed at $v2" test "$(in_root dpkg-query -W -f='${Version}' peercam)" = "$v2"
check "the locally edited /etc/peercam/peercam.toml survived the upgrade" test "$(sha256sum <"$root/etc/peercam/peercam.toml")" = "$edited"
check "no .dpkg-new/.dpkg-dist left next to it" bash -c "! ls '$root'/etc/peercam/*.dpkg-* 2>/dev/null"
check "peercam is still in video, gpio and audio" test "$(in_root id -nG peercam 2>/dev/null | tr ' ' '\n' | grep -cxE 'video|gpio|audio')" = 3
check "the edited config picks the board (peercam devices)" grep -q usb-webcam <<<"$(in_root peercam devices 2>&1)"

# --- remove keeps the config and the user; purge takes them ---
check "dpkg --remove peercam" in_root dpkg --remove peercam
check "after remove: /usr/bin/peercam is gone" test ! -e "$root/usr/bin/peercam"
check "after remove: the config and the user are still there" bash -c "test -f '$root/etc/peercam/peercam.toml' && chroot '$root' getent passwd peercam"
check "dpkg --purge peercam" in_root dpkg --purge peercam
check "after purge: user peercam is gone" bash -c "! chroot '$root' getent passwd peercam"
check "after purge: group peercam is gone" bash -c "! chroot '$root' getent group peercam"
check "after purge: /etc/peercam is gone" test ! -e "$root/etc/peercam"
check "after purge: /var/lib/peercam is gone" test ! -e "$root/var/lib/peercam"
check "after purge: dpkg knows no peercam" bash -c "! chroot '$root' dpkg-query -W peercam"

echo "install-check: $((SECONDS - start)) s"
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
