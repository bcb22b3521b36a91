#!/usr/bin/env bash
# Installs what alcove needs on Debian 12, builds it as a static binary,
# installs it to /usr/local/bin, and runs a first sandbox.
#
#   --service   also install dist/alcove.service (the daemon under systemd,
#               Delegate=yes) to /etc/systemd/system and enable and start it
#   --no-demo   skip the first sandbox and function
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/packages.sh
alcove_require_root setup.sh
service=no demo=yes
for arg in "$@"; do
    case "$arg" in
        --service) service=yes ;;
        --no-demo) demo=no ;;
        -h|--help) sed -n '2,7p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "setup.sh: unknown option $arg (try --help)" >&2; exit 2 ;;
    esac
done
alcove_install_packages
alcove_ensure_rust

# Static (glibc crt-static): no dynamic loader at start, ~0.3 ms less per run.
target=$(rustc -vV | sed -n 's/^host: //p')
RUSTFLAGS="-C target-feature=+crt-static" cargo build --release --locked --target "$target" -p alcove -p alcove-oci
install -m 0755 "target/$target/release/alcove" /usr/local/bin/alcove
# The OCI runtime (runc's command line) for podman --runtime, containerd and Kubernetes.
install -m 0755 "target/$target/release/alcove-oci" /usr/local/bin/alcove-oci
install -m 0755 "target/$target/release/alcove-probe" /usr/local/bin/alcove-probe
# The accelerator loads the NVIDIA driver and cuBLAS with dlopen, which a
# static glibc binary cannot do reliably: it is linked dynamically.
cargo build --release --locked -p alcove-accel
install -m 0755 target/release/alcove-accel /usr/local/bin/alcove-accel
echo "installed /usr/local/bin/alcove ($(alcove --version))"

if [ "$service" = yes ]; then
    install -m 0644 dist/alcove.service /etc/systemd/system/alcove.service
    if [ -d /run/systemd/system ]; then
        systemctl daemon-reload
        systemctl enable --now alcove.service
        for _ in $(seq 100); do
            curl -fsS http://127.0.0.1:8480/healthz >/dev/null 2>&1 && break
            sleep 0.1
        done
        systemctl --no-pager --lines=0 status alcove.service || true
        echo "alcove.service is enabled and serves http://127.0.0.1:8480 (ALCOVE_SERVER's default); its console: http://127.0.0.1:8480/ui/ (token: /var/lib/alcove/token)"
    else
        echo "installed /etc/systemd/system/alcove.service; systemd is not running here," \
            "so enable it where it is: systemctl enable --now alcove"
    fi
fi

if [ "$demo" = no ]; then
    exit 0
fi
echo
echo "\$ alcove run --memory 64M --pids 32 --timeout 5s --report /tmp/alcove-first-run.json -- sh -c '...'"
alcove run --memory 64M --pids 32 --timeout 5s --report /tmp/alcove-first-run.json -- \
    sh -c 'echo "hello from $(hostname): pid $$, $(id -un), $(ls /proc | grep -c "^[0-9]") processes visible, network: $(tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d " ")"'
echo
echo "report (/tmp/alcove-first-run.json):"
cat /tmp/alcove-first-run.json

# The functions platform: a daemon on a temporary loopback port with a
# temporary data directory, one deploy and one invocation, then stopped.
echo
demo=$(mktemp -d /tmp/alcove-demo.XXXXXX)
alcove serve --listen 127.0.0.1:0 --data-dir "$demo/data" 2> "$demo/serve.log" &
daemon=$!
trap 'kill $daemon 2>/dev/null; wait $daemon 2>/dev/null; rm -rf "$demo"' EXIT
for _ in $(seq 100); do grep -q "serving http://" "$demo/serve.log" && break; sleep 0.05; done
export ALCOVE_SERVER=http://$(sed -n 's|.*serving http://\([^ ]*\).*|\1|p' "$demo/serve.log")
# The daemon made its token in its data directory; the CLI reads it from here.
export ALCOVE_TOKEN_FILE=$demo/data/token
echo "\$ alcove serve &    # here on $ALCOVE_SERVER, with a temporary data directory"
echo "\$ alcove fn deploy hello --http --handler 'python3 /fn/main.py' --code examples/hello-python --memory 128M --timeout 5s"
alcove fn deploy hello --http --handler 'python3 /fn/main.py' --code examples/hello-python --memory 128M --timeout 5s
echo "\$ alcove fn invoke hello --data '{\"name\": \"Ada\"}'"
alcove fn invoke hello --data '{"name": "Ada"}'
echo
echo "\$ curl -s -H \"Authorization: Bearer \$(cat $ALCOVE_TOKEN_FILE)\" -X POST $ALCOVE_SERVER/v1/functions/hello/invoke -d '{\"name\": \"curl\"}'"
curl -s -H "Authorization: Bearer $(cat "$ALCOVE_TOKEN_FILE")" -X POST "$ALCOVE_SERVER/v1/functions/hello/invoke" -d '{"name": "curl"}'
echo
echo "\$ curl -s -H \"Authorization: Bearer \$(cat $ALCOVE_TOKEN_FILE)\" '$ALCOVE_SERVER/fn/hello?name=web'"
curl -s -H "Authorization: Bearer $(cat "$ALCOVE_TOKEN_FILE")" "$ALCOVE_SERVER/fn/hello?name=web"
echo
