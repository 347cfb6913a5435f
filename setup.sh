#!/usr/bin/env bash
# One-time set-up, safe to rerun: a virtual environment in .venv with the pinned packages, and
# the data of config.yaml within reach. Needs only python3; uses apt-get when root and needed.
#   bash setup.sh                # then: .venv/bin/snakemake --cores all
#   CONFIG=configs/x.yaml bash setup.sh
set -euo pipefail
cd "$(dirname "$0")"
CONFIG="${CONFIG:-config.yaml}"
VENV=.venv

say() { echo "setup: $*" >&2; }
can_apt() { [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; }
apt_install() {
    [ -n "${APT_UPDATED:-}" ] || { apt-get update -qq >/dev/null; APT_UPDATED=1; }
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

# 1. The virtual environment (Debian's python3 needs python3-venv for it).
if [ ! -x "$VENV/bin/python" ]; then
    if ! python3 -m venv "$VENV" 2>/dev/null; then
        rm -rf "$VENV"
        if can_apt; then
            say "installing python3-venv"
            apt_install python3-venv
            python3 -m venv "$VENV"
        else
            say "python3 cannot create a virtual environment: install python3-venv (apt-get install python3-venv)"
            exit 1
        fi
    fi
fi

# 2. The packages, reinstalled only when pyproject.toml changes.
stamp="$VENV/.knockout-installed"
want="$(sha256sum pyproject.toml | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    say "installing torch, torchvision, snakemake, papermill, ... into $VENV (a few minutes)"
    "$VENV/bin/python" -m pip install -q -e '.[dev]'
    echo "$want" > "$stamp"
fi

# 3. The data: a mirror, else the official sources, else Debian's package where we can.
if ! "$VENV/bin/python" -m knockout check-data --config "$CONFIG" >/dev/null; then
    if can_apt && apt-cache show dataset-fashion-mnist >/dev/null 2>&1 || { can_apt && apt-get update -qq >/dev/null && APT_UPDATED=1 && apt-cache show dataset-fashion-mnist >/dev/null 2>&1; }; then
        say "no dataset mirror and no internet: installing Debian's dataset-fashion-mnist"
        apt_install dataset-fashion-mnist
    fi
    if ! "$VENV/bin/python" -m knockout check-data --config "$CONFIG"; then
        say "some datasets of $CONFIG can't be had: put their files in a mirror folder of data.mirrors (README, 'Data'), or run on a machine with internet"
        exit 1
    fi
fi
say "ready"
