#!/usr/bin/env bash
# Install the system programs fleetsync's tests and transports use, where missing.
set -euo pipefail
declare -A pkg_of=([sshd]=openssh-server [rsync]=rsync [sqlite3]=sqlite3 [ip]=iproute2 [tc]=iproute2)
missing=()
for cmd in "${!pkg_of[@]}"; do
  command -v "$cmd" >/dev/null 2>&1 || [ -x "/usr/sbin/$cmd" ] || missing+=("${pkg_of[$cmd]}")
done
[ ${#missing[@]} -eq 0 ] && exit 0
mapfile -t missing < <(printf "%s\n" "${missing[@]}" | sort -u)  # ip and tc: one package
sudo=""
[ "$(id -u)" -ne 0 ] && sudo="sudo"
echo "installing: ${missing[*]}"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
