# Sourced by the guest's check scripts (smoke.sh, shared-scope.sh): a temp dir
# removed on exit, and `check-ok: NAME` / `check-fail: NAME: WHY` lines, which
# guest.sh counts.
ALCOVE=${ALCOVE:-/usr/local/bin/alcove}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
ok() { echo "check-ok: $1"; }
bad() { echo "check-fail: $1: $(echo "$2" | tr '\n' ' ' | cut -c1-600)"; }
