#!/usr/bin/env bash
# Installs what kiln's `mpi` feature (data-parallel training, docs/distributed.md) needs, from the
# distribution's packages: Open MPI (mpirun, and the library and headers that the `mpi` crate's
# build links against) and libclang (its build generates the MPI bindings with bindgen).
#
#   openmpi-bin libopenmpi-dev libclang-dev      (Debian/Ubuntu package names)
#
# Idempotent: with the packages installed it does nothing. Exits 0 when it installed them or found
# them, 1 when they are missing and it cannot install them (not root, or no apt-get): the caller
# then skips the feature's tests.
set -euo pipefail
PKGS=(openmpi-bin libopenmpi-dev libclang-dev)
if dpkg -s "${PKGS[@]}" >/dev/null 2>&1 && command -v mpirun >/dev/null; then
    echo "setup-mpi: ${PKGS[*]} already installed"
    exit 0
fi
if [[ $(id -u) -ne 0 ]] || ! command -v apt-get >/dev/null; then
    echo "setup-mpi: needs ${PKGS[*]} (apt-get as root); the mpi feature cannot be built here" >&2
    exit 1
fi
echo "setup-mpi: installing ${PKGS[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq "${PKGS[@]}" >/dev/null
command -v mpirun >/dev/null
