#!/usr/bin/env bash
# Install magpie-trace into a virtual environment and run something with it, on Debian or Ubuntu,
# as root or as a user with sudo. README.md's commands:
#
#   bash install.sh demo     the package, then `magpie-trace demo`                  (~3 min fresh)
#   bash install.sh test     + test extras and sshd, then the fast test tier        (~15 min fresh)
#   bash install.sh engine   + vLLM's CPU build (.ci/setup-engines), then `pytest -m engine`
#
# The virtual environment is the active one ($VIRTUAL_ENV), else .venv here (made if missing):
# Debian and Ubuntu refuse `pip install` into the system Python. Extra words go to pytest
# (`bash install.sh test tests/merge -x`). Non-interactive without a terminal (`sudo -n`).
#
# System packages, installed with apt-get only when missing:
#   python3-venv                     demo, test   `python3 -m venv` needs it on Debian/Ubuntu
#   openssh-server, openssh-client   test         the ssh backend is tested against real sshd on 127.0.0.x
#   slurm-wlm, munge                 test         the slurm backend is tested against a real Slurm cluster
#                                                 on 127.0.77.x (its daemons run as root: as another
#                                                 user those tests skip)
#   (engine: .ci/setup-engines adds faketime, which gives one test "node" a clock running ahead)
#
#   PYTHON   the interpreter that makes the venv (default: python3; it must be 3.11 or newer)
set -euo pipefail
cd "$(dirname "$0")"
export DEBIAN_FRONTEND=noninteractive PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONUNBUFFERED=1

what="${1:-}"
case "$what" in
  demo | test | engine) shift ;;
  *) echo "usage: bash install.sh demo|test|engine [pytest args]" >&2; exit 2 ;;
esac
python="${PYTHON:-python3}"
log() { printf 'install.sh: %s\n' "$*" >&2; }

apt_install() {
  local missing=() pkg
  for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
  done
  ((${#missing[@]})) || return 0
  if ! command -v apt-get >/dev/null; then
    log "needs the system packages ${missing[*]}, and this is not Debian/Ubuntu (no apt-get): install them, then run again"
    exit 1
  fi
  local sudo=()
  if [[ $(id -u) -ne 0 ]]; then
    [[ -t 0 ]] && sudo=(sudo) || sudo=(sudo -n)
  fi
  log "installing system packages: ${missing[*]} (${sudo[*]:-as root})"
  "${sudo[@]}" apt-get update -qq
  "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  log "$python is not Python 3.11 or newer (Ubuntu 22.04: apt-get install python3.11 python3.11-venv, then PYTHON=python3.11 bash install.sh $what)"
  exit 1
fi

if [[ -n ${VIRTUAL_ENV:-} ]]; then
  venv="$VIRTUAL_ENV"
  log "using the active virtual environment $venv"
else
  venv="$PWD/.venv"
  if [[ ! -x $venv/bin/python ]]; then
    "$python" -c 'import ensurepip' 2>/dev/null || apt_install "python3-venv"
    log "making a virtual environment: $venv"
    "$python" -m venv "$venv"
  fi
fi
pip=("$venv/bin/python" -m pip install -q)

start=$SECONDS
log "installing magpie-trace$([[ $what == demo ]] || echo ' with its test extras') into $venv (minutes the first time)"
if [[ $what == demo ]]; then
  "${pip[@]}" -e .
else
  apt_install openssh-server openssh-client slurm-wlm munge
  "${pip[@]}" -e '.[test]'
fi
log "installed in $((SECONDS - start)) s"

case "$what" in
  demo) exec "$venv/bin/magpie-trace" demo ;;
  test) exec "$venv/bin/python" -m pytest "$@" ;;
  engine)
    bash .ci/setup-engines
    exec "$venv/bin/python" -m pytest -m engine "$@"
    ;;
esac
