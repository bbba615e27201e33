# Sourced by tools/run and tools/test: installs what peercam needs from Debian's
# packages (and npm, for the browser tests) when it is missing, and says what it installs.
# Expects a Rust toolchain from rustup (cargo on PATH, Rust 1.95 or newer).

set -euo pipefail

# Packages to build and run peercam with the dev board (test pattern + x264).
PEERCAM_RUN_PACKAGES=(
  build-essential pkg-config libclang-dev
  libgstreamer1.0-dev libgstreamer-plugins-base1.0-dev
  gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-plugins-bad
  gstreamer1.0-plugins-ugly gstreamer1.0-libav gstreamer1.0-tools
  gstreamer1.0-x gstreamer1.0-alsa
)
# A Raspberry Pi's camera module goes through libcamera.
if grep -qs "Raspberry Pi" /proc/device-tree/model 2>/dev/null; then
  PEERCAM_RUN_PACKAGES+=(gstreamer1.0-libcamera)
fi
# More for the test suite: a headless browser and Node for playwright-core; iproute2 and
# coturn for tests/faults.rs (network namespaces, a TURN server of its own).
PEERCAM_TEST_PACKAGES=(chromium nodejs npm systemd iproute2 coturn python3)

peercam_need_cargo() {
  if ! command -v cargo >/dev/null 2>&1; then
    for dir in "$HOME/.cargo/bin" /usr/local/cargo/bin; do
      [ -x "$dir/cargo" ] && export PATH="$dir:$PATH" && return 0
    done
    echo "peercam: cargo not found. Install Rust with rustup first: https://rustup.rs" >&2
    exit 1
  fi
}

# Installs the Debian packages among "$@" that are not installed yet.
peercam_apt_install() {
  local missing=()
  local pkg
  for pkg in "$@"; do
    # A command that is already there (Node from another source) is good enough.
    case "$pkg" in
      nodejs) command -v node >/dev/null 2>&1 && continue ;;
      npm) command -v npm >/dev/null 2>&1 && continue ;;
      chromium) [ -x /usr/bin/chromium ] && continue ;;
    esac
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  echo "peercam: installing Debian packages: ${missing[*]}" >&2
  local sudo=()
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null 2>&1 || { echo "peercam: need root or sudo to install ${missing[*]}" >&2; exit 1; }
    sudo=(sudo)
  fi
  # A stale index elsewhere (a mirror mid-sync) should not stop the packages we need.
  "${sudo[@]}" apt-get update -qq || echo "peercam: apt-get update reported errors; trying the install anyway" >&2
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
  # Debian's coturn enables and starts a system-wide turnserver under systemd (its
  # /etc/default/coturn switch only guards the SysV script). The tests start their own;
  # one we installed for them should not keep serving TURN on port 3478.
  if [[ " ${missing[*]} " == *" coturn "* ]] && [ -d /run/systemd/system ]; then
    echo "peercam: stopping and disabling the coturn service the package started (the tests run their own)" >&2
    "${sudo[@]}" systemctl disable --now coturn.service >&2 || true
  fi
}

# Installs the browser tests' npm modules (playwright-core, the stock PeerJS server and
# client, a stock WHEP player; all pinned in package-lock.json) when any is missing.
peercam_npm_install() {
  local dir="$1" missing
  missing=$(cd "$dir" && node -e '
    const fs = require("fs");
    const deps = Object.keys(require("./package.json").dependencies || {});
    console.log(deps.filter(d => !fs.existsSync(`node_modules/${d}/package.json`)).join(" "));
  ')
  if [ -n "$missing" ]; then
    echo "peercam: installing npm modules for the browser tests in $dir (missing: $missing)" >&2
    (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error)
  fi
}
