#!/usr/bin/env bash
# Checks of the systemd unit (called by test.sh; needs the Debian package
# `systemd` for systemd-analyze and systemd-sysusers, no running systemd):
#   1. `systemd-analyze verify` prints nothing at all. verify exits 0 on
#      unknown keys and bad values, so any output is a failure. It also wants
#      ExecStart's binary to exist, so it checks a temporary copy of the unit
#      whose ExecStart points at a stub executable; nothing else is changed.
#   2. `systemd-analyze security --offline=yes`: the overall exposure score is
#      printed and must be <= MAX_EXPOSURE (2.5 unless set in the environment).
#   3. sysusers.d/fer-edge.conf creates the user and groups in an empty root.
set -euo pipefail
cd "$(dirname "$0")"
UNIT=fer-edge.service
MAX_EXPOSURE=${MAX_EXPOSURE:-2.5}

for tool in systemd-analyze systemd-sysusers; do
    if ! command -v "$tool" >/dev/null; then
        echo "systemd/check.sh: $tool not found; install the Debian package 'systemd' (apt-get install systemd)" >&2
        exit 1
    fi
done

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

echo "-- systemd-analyze verify $UNIT"
printf '#!/bin/sh\nexit 0\n' >"$tmp/fer-edge"
chmod +x "$tmp/fer-edge"
mkdir "$tmp/unit"
sed "s|^ExecStart=/usr/local/bin/fer-edge |ExecStart=$tmp/fer-edge |" "$UNIT" >"$tmp/unit/$UNIT"
if ! grep -q "^ExecStart=$tmp/fer-edge " "$tmp/unit/$UNIT"; then
    echo "FAIL: no 'ExecStart=/usr/local/bin/fer-edge ...' line in $UNIT" >&2
    exit 1
fi
status=0
out=$(systemd-analyze verify "$tmp/unit/$UNIT" 2>&1) || status=$?
if [ "$status" -ne 0 ] || [ -n "$out" ]; then
    echo "FAIL: systemd-analyze verify (exit $status) said:" >&2
    printf '%s\n' "$out" >&2
    exit 1
fi
echo "ok: no output"

echo "-- systemd-analyze security --offline=yes $UNIT"
status=0
out=$(systemd-analyze security --offline=yes "$UNIT" 2>&1) || status=$?
score=$(printf '%s\n' "$out" | sed -n 's/.*Overall exposure level for [^:]*: \([0-9][0-9.]*\).*/\1/p')
if [ -z "$score" ]; then
    echo "FAIL: no 'Overall exposure level' line (exit $status):" >&2
    printf '%s\n' "$out" >&2
    exit 1
fi
printf '%s\n' "$out" | grep '^✗' || true
if awk -v s="$score" -v m="$MAX_EXPOSURE" 'BEGIN { exit !(s > m) }'; then
    echo "FAIL: exposure $score > $MAX_EXPOSURE" >&2
    exit 1
fi
echo "ok: exposure $score (limit $MAX_EXPOSURE)"

echo "-- systemd-sysusers sysusers.d/fer-edge.conf (empty root)"
mkdir -p "$tmp/root/etc"
# An absolute path: a relative one would be looked up under --root.
if ! out=$(systemd-sysusers --root="$tmp/root" "$PWD/sysusers.d/fer-edge.conf" 2>&1); then
    echo "FAIL: systemd-sysusers said:" >&2
    printf '%s\n' "$out" >&2
    exit 1
fi
groups_of_user=$(awk -F: '$4 ~ /(^|,)fer-edge(,|$)/ { print $1 }' "$tmp/root/etc/group" | sort | tr '\n' ' ')
if ! grep -q '^fer-edge:' "$tmp/root/etc/passwd" || [ "$groups_of_user" != "gpio video " ]; then
    echo "FAIL: expected user fer-edge in groups gpio and video, got: ${groups_of_user:-none}" >&2
    exit 1
fi
echo "ok: user fer-edge, supplementary groups: $groups_of_user"
