#!/usr/bin/env bash
# Installs the Debian packages a throw-away single-node SLURM cluster needs (tests/slurm_cluster.py).
# Idempotent: packages already installed are skipped, and nothing is done when all are there.
#
# Why accounting (slurmdbd + mariadb-server) is included: snakemake-executor-plugin-slurm 2.8 polls
# job states with `sacct` whenever the `sacct` binary exists (it ships in slurm-client), validates a
# given slurm_account with `sacctmgr`, and guesses a missing one with `sacct`. Without a working
# slurmdbd every status query fails, so the local cluster runs real job accounting, as a site does.
#
# The daemons are NOT started here (nor enabled): the test fixture starts its own copies with
# configs in a temporary directory and stops them by PID.
set -euo pipefail

packages=(slurmctld slurmd slurm-client munge slurmdbd mariadb-server)

if [[ $(id -u) -ne 0 ]]; then
  echo "install-slurm.sh: must run as root (apt-get); run it with sudo, or install: ${packages[*]}" >&2
  exit 1
fi

missing=()
for package in "${packages[@]}"; do
  if [[ $(dpkg-query -W -f='${Status}' "$package" 2>/dev/null) != "install ok installed" ]]; then
    missing+=("$package")
  fi
done
if [[ ${#missing[@]} -eq 0 ]]; then
  exit 0
fi

# Package maintainer scripts would start munge/mariadb/slurm with the system-wide config;
# a policy-rc.d answering 101 ("action forbidden") stops that. Keep an existing one untouched.
policy=/usr/sbin/policy-rc.d
if [[ ! -e $policy ]]; then
  printf '#!/bin/sh\nexit 101\n' >"$policy"
  chmod 755 "$policy"
  trap 'rm -f "$policy"' EXIT
fi

export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends \
  -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
  "${missing[@]}" >/dev/null
echo "install-slurm.sh: installed ${missing[*]}"
