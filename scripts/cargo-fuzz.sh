#!/usr/bin/env bash
# Coverage-guided fuzzing with cargo-fuzz (libFuzzer) of the credential, policy, route and
# search_params parsers, each for a set time. Needs `cargo install cargo-fuzz`. On a stable
# toolchain, RUSTC_BOOTSTRAP=1 lets cargo-fuzz pass its -Z sanitizer flags.
#
#   scripts/cargo-fuzz.sh [SECONDS_PER_TARGET]      (default 60)
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
budget=${1:-60}
export RUSTC_BOOTSTRAP=1
for target in credential policy routes search_params; do
  cargo fuzz run "$target" -- -max_total_time="$budget" -max_len=4096 2>&1 |
    grep -E "^#[0-9]+.*(DONE|pulse)|Done [0-9]+ runs|ERROR|panicked" | tail -2 | sed "s/^/$target: /"
done
