# shellcheck shell=bash
# Common setup for scripts/test and scripts/demo. Source it, do not run it.
#
# Works on a fresh Debian / Raspberry Pi OS machine: installs what is missing with
# apt-get (through sudo when not root), creates .venv and installs the package in it.
# Safe to run again: every step is skipped when its result is already there.

set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$REPO_ROOT/.venv"
NODE_PREFIX="$REPO_ROOT/.node"
export DEBIAN_FRONTEND=noninteractive

say() { printf '[setup] %s\n' "$*" >&2; }
die() { printf '[setup] error: %s\n' "$*" >&2; exit 1; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo --preserve-env=DEBIAN_FRONTEND "$@"
    else
        die "need root for: $* (run as root or install sudo)"
    fi
}

_apt_updated=0
apt_install() {
    command -v apt-get >/dev/null 2>&1 \
        || die "apt-get not found: install $* by hand (this script knows Debian only)"
    if [ "$_apt_updated" -eq 0 ]; then
        say "apt-get update"
        as_root apt-get update -q </dev/null
        _apt_updated=1
    fi
    say "apt-get install $*"
    as_root apt-get install -y -q --no-install-recommends "$@" </dev/null
}

have_mosquitto() {
    command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] \
        || [ -x /usr/local/sbin/mosquitto ]
}

ensure_mosquitto() {
    # The tests start their own brokers on free loopback ports. If apt starts the
    # system service on 1883 as well, it is left alone.
    have_mosquitto && return 0
    apt_install mosquitto
    have_mosquitto || die "mosquitto still not found after apt-get install"
}

ensure_node() {
    if command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1; then
        return 0
    fi
    local pkgs=()
    command -v node >/dev/null 2>&1 || pkgs+=(nodejs)
    command -v npm >/dev/null 2>&1 || pkgs+=(npm)
    apt_install "${pkgs[@]}"
}

python_ok() {
    "$1" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null
}

ensure_venv() {
    if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -m pip --version >/dev/null 2>&1; then
        return 0
    fi
    command -v python3 >/dev/null 2>&1 || apt_install python3
    python_ok python3 || die "Python >= 3.11 needed, python3 is $(python3 -V 2>&1)"
    rm -rf "$VENV"  # a half-made one (venv fails late when ensurepip is missing)
    say "creating $VENV"
    if ! python3 -m venv "$VENV" >/dev/null 2>&1; then
        rm -rf "$VENV"
        # Debian splits venv/ensurepip out of python3
        local minor
        minor="$(python3 -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')"
        apt_install python3-venv "python${minor}-venv" || apt_install python3-venv
        python3 -m venv "$VENV" || die "python3 -m venv failed"
    fi
}

ensure_package() {
    # Editable install: source edits need no reinstall, only pyproject.toml changes do.
    local stamp="$VENV/.passerelle-installed" want
    want="$(sha256sum "$REPO_ROOT/pyproject.toml" | cut -d' ' -f1)"
    if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
        return 0
    fi
    say "pip install -e '.[dev]'"
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check -e "${REPO_ROOT}[dev]"
    printf '%s\n' "$want" >"$stamp"
}

ensure_micropython_wasm() {
    # For the tests that run MicroPython code in node; kept out of the repo's root
    # (no package.json) in .node/.
    # pyright and MicroPython's stubs: the portable drivers are type-checked against what
    # MicroPython really has (tests/test_sx127x_micropython.py). One npm command for both,
    # since a second --no-save install would remove the first package.
    if [ ! -d "$NODE_PREFIX/node_modules/@micropython" ] || [ ! -x "$NODE_PREFIX/node_modules/.bin/pyright" ]; then
        ensure_node
        mkdir -p "$NODE_PREFIX"
        say "npm install @micropython/micropython-webassembly-pyscript pyright into .node/"
        (cd "$REPO_ROOT" && npm install --no-save --no-audit --no-fund --prefix "$NODE_PREFIX" \
            @micropython/micropython-webassembly-pyscript pyright </dev/null)
    fi
    if [ ! -f "$NODE_PREFIX/micropython-stubs/machine.pyi" ]; then
        say "pip install micropython-rp2-stubs into .node/micropython-stubs"
        "$VENV/bin/pip" install --quiet --target "$NODE_PREFIX/micropython-stubs" micropython-rp2-stubs
    fi
}

ensure_python_env() {
    ensure_venv
    ensure_package
}
