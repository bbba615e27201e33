# shellcheck shell=bash disable=SC2034
# Sourced by tools/cross-build, tools/package and tests/package/cross-check.sh: cross
# compiling peercam for Raspberry Pi OS (bookworm) boards from a Debian 12 machine.
#
# Everything is prepared on demand and idempotently:
#   * the Rust target (rustup target add) and the cross gcc and libc from apt;
#   * a sysroot per target in target/sysroot/<deb arch>/: the target's own Debian .debs
#     (GStreamer 1.22, GLib, kernel headers, ... and what they depend on), unpacked there,
#     never installed into the host (multiarch -dev packages would replace the host's);
#   * the environment for cargo: linker, C compiler, pkg-config and bindgen, each keyed to
#     the target triple so that host build scripts and the native build are untouched.
# Cross builds go to target/cross (CARGO_TARGET_DIR), apart from the native target/.

set -euo pipefail

PEERCAM_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
. "$PEERCAM_ROOT/tools/deps.sh"

# The packages a build links against (pkg-config files, headers, libraries) and the
# kernel headers bindgen reads for the v4l crate; libc6/libgcc-s1 are the target's runtime
# libraries (the cross toolchain brings its own libc6-dev to link with).
PEERCAM_SYSROOT_BUILD=(
  libgstreamer1.0-dev libgstreamer-plugins-base1.0-dev libglib2.0-dev linux-libc-dev
  libc6 libgcc-s1
)
# What `peercam check --board dev` needs at run time under qemu (armv7 only).
PEERCAM_SYSROOT_RUN=(
  gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-plugins-bad
  gstreamer1.0-plugins-ugly gstreamer1.0-x
)

: "${CROSS_TARGET_DIR:=$PEERCAM_ROOT/target/cross}"
: "${CROSS_SYSROOTS:=$PEERCAM_ROOT/target/sysroot}"

CROSS_SUDO=()
[ "$(id -u)" -eq 0 ] || CROSS_SUDO=(sudo)

say() { printf 'cross: %s\n' "$*" >&2; }

# Sets the names for one target: aarch64 or armv7 (also accepts arm64 / armhf).
cross_target() {
  case "$1" in
    aarch64 | arm64)
      CROSS_NAME=aarch64 CROSS_TRIPLE=aarch64-unknown-linux-gnu CROSS_ARCH=arm64
      CROSS_GNU=aarch64-linux-gnu CROSS_LIBC_DEV=libc6-dev-arm64-cross
      ;;
    armv7 | armhf)
      CROSS_NAME=armv7 CROSS_TRIPLE=armv7-unknown-linux-gnueabihf CROSS_ARCH=armhf
      CROSS_GNU=arm-linux-gnueabihf CROSS_LIBC_DEV=libc6-dev-armhf-cross
      ;;
    *)
      echo "unknown target $1 (aarch64 or armv7)" >&2
      return 1
      ;;
  esac
  CROSS_SYSROOT="$CROSS_SYSROOTS/$CROSS_ARCH"
  CROSS_DEBS="$CROSS_SYSROOTS/debs-$CROSS_ARCH"
  CROSS_APT="$CROSS_SYSROOTS/apt-$CROSS_ARCH"
  CROSS_BIN="$CROSS_TARGET_DIR/$CROSS_TRIPLE/release/peercam"
}

# The host side: cross gcc + libc, pkg-config, libclang (bindgen), dpkg-dev, the rustup
# target.
cross_prepare_host() {
  peercam_need_cargo
  cross_apt_install "gcc-$CROSS_GNU" "$CROSS_LIBC_DEV" pkg-config libclang-dev file binutils
  if ! rustup target list --installed | grep -x "$CROSS_TRIPLE" >/dev/null; then
    say "rustup target add $CROSS_TRIPLE"
    rustup target add "$CROSS_TRIPLE"
  fi
}

# apt for the target architecture, in a state of its own (target/sysroot/apt-<arch>/): the
# host's sources (the same mirror), the target's package lists, an empty dpkg status.
# The host's apt and dpkg are untouched: no `dpkg --add-architecture`, so the host's
# `apt-get update` does not fetch (or fail on) the target's lists.
cross_apt() {
  APT_CONFIG="$CROSS_APT/apt.conf" "$@"
}

cross_apt_setup() {
  mkdir -p "$CROSS_APT/lists/partial" "$CROSS_APT/cache/archives/partial" "$CROSS_APT/preferences.d"
  [ -e "$CROSS_APT/status" ] || : >"$CROSS_APT/status"
  printf '%s\n' \
    "Dir::State \"$CROSS_APT\";" \
    "Dir::State::lists \"$CROSS_APT/lists\";" \
    "Dir::State::status \"$CROSS_APT/status\";" \
    "Dir::Cache \"$CROSS_APT/cache\";" \
    "Dir::Etc::Preferences \"/dev/null\";" \
    "Dir::Etc::PreferencesParts \"$CROSS_APT/preferences.d\";" \
    "APT::Architectures { \"$CROSS_ARCH\"; };" \
    "Acquire::Languages \"none\";" \
    "APT::Sandbox::User \"$(id -un)\";" >"$CROSS_APT/apt.conf"
  if [ -z "$(cross_apt apt-cache policy "libgstreamer1.0-dev:$CROSS_ARCH" 2>/dev/null | awk '/Candidate:/ {print $2}' | grep -v none)" ]; then
    cross_apt_update
  fi
}

# Installs the host packages among "$@" that are missing.
cross_apt_install() {
  local missing=() p
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep "install ok installed" >/dev/null || missing+=("$p")
  done
  ((${#missing[@]})) || return 0
  say "apt-get install ${missing[*]}"
  "${CROSS_SUDO[@]}" apt-get update -qq >&2 || say "warning: apt-get update reported a failed index"
  DEBIAN_FRONTEND=noninteractive "${CROSS_SUDO[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
}

# apt-get update of the target's lists; lives with one stale index (a mirror syncing):
# the packages needed are looked up by name afterwards.
cross_apt_update() {
  say "apt-get update ($CROSS_ARCH lists, in ${CROSS_APT#"$PEERCAM_ROOT"/})"
  cross_apt apt-get update -qq >&2 ||
    say "warning: apt-get update reported a failed index; going on with the lists it has"
}

# Prints the dependency closure of "$@" for architecture $CROSS_ARCH, one name a line:
# Depends and Pre-Depends (first alternative of each, first provider of a virtual package),
# only packages of that architecture (Multi-Arch: foreign tools and arch-all data are the
# host's business or not needed), without what the cross toolchain provides (libc6-dev and
# friends) and without build tools, interpreters and dlopen()ed GL drivers that nothing
# links against (pkgconf, glib's dev tools, gir, python, perl, LLVM, mesa's DRI drivers).
cross_closure() {
  local arch="$CROSS_ARCH"
  local -A seen=()
  local frontier=() found=() p
  for p in "$@"; do
    seen[$p]=1
    frontier+=("$p")
  done
  while ((${#frontier[@]})); do
    mapfile -t found < <(cross_apt apt-cache depends --no-recommends --no-suggests --no-conflicts \
      --no-breaks --no-replaces --no-enhances "${frontier[@]/%/:$arch}" | awk -v A=":$arch" '
      function arch_ok(c) { return substr(c, length(c) - length(A) + 1) == A }
      function pick(   i, j, n, p) {
        for (i = 1; i <= ng; i++) {
          if (cand[i] !~ /^</) { if (arch_ok(cand[i])) return cand[i]; continue }
          n = split(prov[i], p, " ")
          for (j = 1; j <= n; j++) if (arch_ok(p[j])) return p[j]
        }
        return ""
      }
      function close_group(   c) {
        if (ng) { c = pick(); if (c != "") print substr(c, 1, length(c) - length(A)) }
        ng = 0; open = 0
      }
      /^[^ ]/ { close_group(); next }
      /^ [ |](Pre)?Depends: / {
        if (!open) close_group()
        ng++; cand[ng] = $2; prov[ng] = ""
        open = ($1 ~ /^\|/)
        next
      }
      /^    / { prov[ng] = prov[ng] " " $1 }
      END { close_group() }' | sort -u)
    frontier=()
    for p in "${found[@]}"; do
      [ -n "${seen[$p]:-}" ] && continue
      seen[$p]=1
      cross_skipped "$p" && continue
      frontier+=("$p")
    done
  done
  for p in "${!seen[@]}"; do cross_skipped "$p" || echo "$p"; done | sort
}

cross_skipped() {
  case "$1" in
    libc6-dev | libc-dev-bin | libcrypt-dev | libnsl-dev | libtirpc-dev | rpcsvc-proto | gcc-*-base) return 0 ;;
    pkgconf | pkg-config | pkgconf-bin | libpkgconf3 | libglib2.0-bin | libglib2.0-dev-bin | liborc-0.4-dev-bin) return 0 ;;
    gir1.2-* | libgirepository-1.0-1 | python3* | libpython3* | perl* | libperl* | libllvm* | libgl1-mesa-dri) return 0 ;;
    dpkg | install-info | debconf | debconf-* | *-doc) return 0 ;;
  esac
  return 1
}

# Makes sure the sysroot of the current target holds the closure of "$@": downloads the
# missing .debs (kept in target/sysroot/debs-<arch>/), unpacks the ones not unpacked yet,
# and rewrites absolute symlinks to point inside the sysroot.
cross_sysroot() {
  cross_apt_setup
  local want=() missing=() new=() p deb
  mkdir -p "$CROSS_SYSROOT" "$CROSS_DEBS"
  # The closure is resolved again only when the package lists or the roots changed.
  local cache
  cache="$CROSS_SYSROOT/.peercam-closure-$(echo "$*" | md5sum | cut -c1-12)"
  if [ -s "$cache" ] && [ -z "$(find "$CROSS_APT/lists" -maxdepth 1 -newer "$cache" -print -quit)" ]; then
    mapfile -t want <"$cache"
  else
    mapfile -t want < <(cross_closure "$@")
    printf '%s\n' "${want[@]}" >"$cache"
  fi
  local done_list="$CROSS_SYSROOT/.peercam-unpacked"
  touch "$done_list"
  for p in "${want[@]}"; do
    compgen -G "$CROSS_DEBS/${p}_*_$CROSS_ARCH.deb" >/dev/null || missing+=("$p:$CROSS_ARCH")
  done
  if ((${#missing[@]})); then
    say "downloading ${#missing[@]} of ${#want[@]} $CROSS_ARCH packages into ${CROSS_DEBS#"$PEERCAM_ROOT"/}"
    if ! (cd "$CROSS_DEBS" && cross_apt apt-get download -q "${missing[@]}" >/dev/null); then
      cross_apt_update # a stale list names versions the mirror no longer has
      (cd "$CROSS_DEBS" && cross_apt apt-get download -q "${missing[@]}" >/dev/null)
    fi
  fi
  # Bookworm packages still put libraries in /lib: keep the merged-/usr layout.
  for p in bin sbin lib; do
    [ -e "$CROSS_SYSROOT/$p" ] || { mkdir -p "$CROSS_SYSROOT/usr/$p" && ln -s "usr/$p" "$CROSS_SYSROOT/$p"; }
  done
  for p in "${want[@]}"; do
    grep -qx "$p" "$done_list" && continue
    for deb in "$CROSS_DEBS/${p}"_*_"$CROSS_ARCH.deb"; do
      dpkg-deb --fsys-tarfile "$deb" | tar -x --keep-directory-symlink -C "$CROSS_SYSROOT"
    done
    echo "$p" >>"$done_list"
    new+=("$p")
  done
  if ((${#new[@]})); then
    say "unpacked ${#new[@]} packages into ${CROSS_SYSROOT#"$PEERCAM_ROOT"/}"
    cross_fix_symlinks
  fi
}

# /usr/lib/x/libfoo.so -> /lib/x/libfoo.so.1 would leave the sysroot: make it relative.
cross_fix_symlinks() {
  local link target rel
  while IFS= read -r -d '' link; do
    target="$(readlink "$link")"
    case "$target" in /*) ;; *) continue ;; esac
    rel="$(realpath -m --relative-to="$(dirname "$link")" "$CROSS_SYSROOT$target")"
    ln -sfn "$rel" "$link"
  done < <(find "$CROSS_SYSROOT" -type l -print0)
}

# Exports the environment cargo needs to build for the current target. Every variable is
# keyed to the target triple, so build scripts compiled for the host are not affected.
cross_env() {
  local t="${CROSS_TRIPLE//-/_}" T
  T="$(echo "$t" | tr '[:lower:]' '[:upper:]')"
  local lib="$CROSS_SYSROOT/usr/lib/$CROSS_GNU"
  export CARGO_TARGET_DIR="$CROSS_TARGET_DIR"
  export "CARGO_TARGET_${T}_LINKER=$CROSS_GNU-gcc"
  # The target's libraries come from the sysroot; libc, crt*.o and libgcc from the cross
  # toolchain (gcc's own sysroot, /usr/$CROSS_GNU). rpath-link lets ld find the libraries
  # that GStreamer's libraries need in turn.
  export "CARGO_TARGET_${T}_RUSTFLAGS=-L native=$lib -C link-arg=-Wl,-rpath-link,$lib"
  export "CC_$t=$CROSS_GNU-gcc" "AR_$t=$CROSS_GNU-ar"
  export "PKG_CONFIG_ALLOW_CROSS_$t=1"
  export "PKG_CONFIG_SYSROOT_DIR_$t=$CROSS_SYSROOT"
  export "PKG_CONFIG_LIBDIR_$t=$lib/pkgconfig:$CROSS_SYSROOT/usr/share/pkgconfig"
  export "PKG_CONFIG_PATH_$t="
  # bindgen (v4l2-sys-mit: <linux/videodev2.h>) must see the target's kernel headers
  # (linux-libc-dev:<arch> in the sysroot) and its libc headers (the cross toolchain's),
  # not the host's.
  export "BINDGEN_EXTRA_CLANG_ARGS_$t=--sysroot=$CROSS_SYSROOT -I$CROSS_SYSROOT/usr/include/$CROSS_GNU -I$CROSS_SYSROOT/usr/include -isystem /usr/$CROSS_GNU/include"
}

# Builds the release binary for the current target; prints nothing on stdout.
cross_build() {
  cross_env
  (cd "$PEERCAM_ROOT" && cargo build --release --locked --target "$CROSS_TRIPLE" >&2)
}
