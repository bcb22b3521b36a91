#!/usr/bin/env bash
# Runs every check: formatting, lints, unit tests, and the integration tests,
# which need root and run for real against this kernel.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/packages.sh
alcove_require_root test.sh
# umoci and skopeo build the real images the image tests import.
alcove_install_packages umoci skopeo
alcove_ensure_rust
cargo fmt --all -- --check
cargo clippy --all-targets --locked -- -D warnings
cargo test --workspace --locked
