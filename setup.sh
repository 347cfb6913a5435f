#!/usr/bin/env bash
# One-time set-up, safe to rerun: a virtual environment in .venv (beside this script) with the
# pinned packages, and the data of a config within reach. Needs only python3; uses apt-get when
# root and needed.
#   bash setup.sh                  # the default study, config.yaml; then: .venv/bin/snakemake --cores all
#   CONFIG=configs/x.yaml bash setup.sh
#   cd ~/my-project && CONFIG=config.yaml bash ~/knockout/setup.sh
# CONFIG= names the config whose datasets are checked (default: this folder's config.yaml): a
# relative CONFIG is taken from the folder you run setup.sh in, and so are the relative paths in
# it (image folders, tensors files, model files, mirrors), as the workflow takes them from the
# folder it runs in. Its datasets are each found in a mirror, downloadable, or there on disk; else
# setup stops and says which (exit 1).
set -euo pipefail
WORKDIR="$PWD"  # the folder setup.sh is run in: the config's working directory
if [ -n "${CONFIG:-}" ]; then
    case "$CONFIG" in /*) ;; *) CONFIG="$WORKDIR/$CONFIG" ;; esac
fi
cd "$(dirname "$0")"
HERE="$PWD"
if [ -z "${CONFIG:-}" ]; then
    CONFIG="$HERE/config.yaml"
    WORKDIR="$HERE"
fi
VENV=.venv

say() { echo "setup: $*" >&2; }
can_apt() { [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; }
apt_install() {
    [ -n "${APT_UPDATED:-}" ] || { apt-get update -qq >/dev/null; APT_UPDATED=1; }
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}
[ -f "$CONFIG" ] || { say "no config $CONFIG (a relative CONFIG is taken from the folder you run setup.sh in)"; exit 1; }

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

# 3. The data of $CONFIG: a mirror, else the official sources, else Debian's package where we can.
# check-data exits 3 when a dataset can't be had, 2 when the config itself is wrong (one line).
check_data() { (cd "$WORKDIR" && "$HERE/$VENV/bin/python" -m knockout check-data --config "$CONFIG"); }
status=0
check_data >/dev/null || status=$?
if [ "$status" = 2 ]; then
    say "$CONFIG: fix the error above (relative paths in it are taken from $WORKDIR)"
    exit 1
fi
if [ "$status" != 0 ]; then
    if can_apt && apt-cache show dataset-fashion-mnist >/dev/null 2>&1 || { can_apt && apt-get update -qq >/dev/null && APT_UPDATED=1 && apt-cache show dataset-fashion-mnist >/dev/null 2>&1; }; then
        say "no dataset mirror and no internet: installing Debian's dataset-fashion-mnist"
        apt_install dataset-fashion-mnist
    fi
    if ! check_data; then
        say "some datasets of $CONFIG can't be had: put their files in a mirror folder of data.mirrors (README, 'Data'), or run on a machine with internet"
        exit 1
    fi
fi
say "ready"
