#!/usr/bin/env bash
# CI: Debian's PostgreSQL for the shared-store tests (tests/tracking_server.py starts a throw-away
# server with it, behind an MLflow tracking server). Installs the `postgresql` package with apt-get
# when initdb is absent and this runs as root on a system with apt-get; prints one line saying what
# it did or why not. Never fails the CI: without PostgreSQL those tests skip with the reason.
#
#   bash scripts/ci/postgres.sh
set -u

found="$(command -v initdb 2>/dev/null || ls -d /usr/lib/postgresql/*/bin/initdb 2>/dev/null | sort -V | tail -n 1)"
if [ -n "$found" ]; then
    echo "postgres.sh: PostgreSQL is installed ($found)"
    exit 0
fi
if [ "$(id -u)" != 0 ]; then
    echo "postgres.sh: PostgreSQL is not installed and this is not root: not installed (the shared-store tests will skip)"
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "postgres.sh: PostgreSQL is not installed and there is no apt-get: not installed (the shared-store tests will skip)"
    exit 0
fi
log="$(mktemp "${TMPDIR:-/tmp}/medxfer-postgres-install.XXXXXX")"
install() {
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql >>"$log" 2>&1
}
# the package lists may be missing or stale in a fresh container: update once, only if the first try fails
if install || { apt-get update -qq >>"$log" 2>&1 && install; }; then
    found="$(ls -d /usr/lib/postgresql/*/bin/initdb 2>/dev/null | sort -V | tail -n 1)"
    echo "postgres.sh: installed Debian's postgresql package (${found:-initdb not found afterwards})"
else
    echo "postgres.sh: apt-get could not install postgresql (the shared-store tests will skip): $(tail -n 1 "$log")"
fi
rm -f "$log"
exit 0
