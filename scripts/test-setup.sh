#!/usr/bin/env bash
# What the test suite needs beside Python, set up on a Debian/Ubuntu machine (`make test` runs
# this first): PostgreSQL and Redis running on 127.0.0.1, and Debian's nginx and Chromium
# installed (the tests drive them; no browser is ever downloaded), and the npm clients the
# tests run, from their lock file.
#
# Started when down: PostgreSQL (pg_ctlcluster) and Redis (redis-server --daemonize).
# Installed with apt when missing, as root: nginx-light and chromium.
# Not root, or a piece that cannot be set up: one line per missing piece with the command that
# fixes it, then exit 1 before any test runs.
# CHATRELAY_TEST_DATABASE_URL / CHATRELAY_TEST_REDIS_URL pointing elsewhere skip that check.
set -uo pipefail

missing=()
say() { printf 'test-setup: %s\n' "$*"; }
is_root() { [ "$(id -u)" = 0 ]; }

apt_install() {  # apt_install <package>...
    is_root || return 1
    say "installing $* with apt"
    if [ -z "${APT_UPDATED:-}" ]; then apt-get update -qq >/dev/null && APT_UPDATED=1; fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

wait_for() {  # wait_for <seconds> <command>...
    local limit=$1; shift
    for _ in $(seq 1 "$limit"); do "$@" >/dev/null 2>&1 && return 0; sleep 1; done
    return 1
}

# PostgreSQL: the storage tests run on SQLite and on a real PostgreSQL.
if [ -z "${CHATRELAY_TEST_DATABASE_URL:-}" ]; then
    if ! pg_isready -h 127.0.0.1 -p 5432 -q 2>/dev/null; then
        if command -v pg_ctlcluster >/dev/null && [ -d /etc/postgresql ] && is_root; then
            say "starting PostgreSQL"
            pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start
            wait_for 30 pg_isready -h 127.0.0.1 -p 5432 -q \
                || missing+=("PostgreSQL did not start: see /var/log/postgresql/")
        else
            missing+=("PostgreSQL on 127.0.0.1:5432 (trust auth, database test): as root,\
 pg_ctlcluster --skip-systemctl-redirect \$(ls /etc/postgresql) main start; or set\
 CHATRELAY_TEST_DATABASE_URL to a server the tests may create databases on")
        fi
    fi
fi

# Redis: the stream tests run on the memory backend and on a real Redis.
if [ -z "${CHATRELAY_TEST_REDIS_URL:-}" ]; then
    if ! redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
        command -v redis-server >/dev/null || apt_install redis-server
        if command -v redis-server >/dev/null; then
            say "starting Redis"
            redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
                >/dev/null
            wait_for 30 redis-cli -h 127.0.0.1 -p 6379 ping \
                || missing+=("Redis did not start on 127.0.0.1:6379")
        else
            missing+=("Redis: apt-get install -y redis-server, or set CHATRELAY_TEST_REDIS_URL")
        fi
    fi
fi

# nginx: the multi-instance tests put two servers behind a real one.
if ! command -v nginx >/dev/null && [ ! -x /usr/sbin/nginx ]; then
    apt_install nginx-light || missing+=("nginx: apt-get install -y nginx-light")
fi

# Chromium: the chat page's end-to-end tests drive Debian's browser.
if [ ! -x /usr/bin/chromium ]; then
    apt_install chromium || missing+=("Chromium at /usr/bin/chromium: apt-get install -y chromium")
fi

# Node and the npm clients the tests run (tests/js/vercel: the Vercel AI SDK), exactly as
# their lock file says; installed again when the lock changes.
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
    apt_install nodejs npm || missing+=("Node.js and npm: apt-get install -y nodejs npm")
fi
vercel=tests/js/vercel
stamp=$vercel/node_modules/.installed-from-lock  # the lock the packages came from
if command -v npm >/dev/null && ! cmp -s "$vercel/package-lock.json" "$stamp" 2>/dev/null; then
    say "installing $vercel's npm packages from its lock file"
    if npm ci --prefix "$vercel" --no-audit --no-fund --loglevel=error >/dev/null; then
        cp "$vercel/package-lock.json" "$stamp"
    else
        missing+=("$vercel's npm packages: npm ci --prefix $vercel")
    fi
fi

if [ ${#missing[@]} -gt 0 ]; then
    say "the tests cannot run yet; missing:"
    for line in "${missing[@]}"; do printf '  - %s\n' "$line"; done
    exit 1
fi
