#!/usr/bin/env bash
# Fuzzes the parsers for a set time per target, by running their property tests
# (src/properties.rs) over and over with many cases and fresh random seeds: arbitrary
# strings and near-misses of valid inputs, on the stable toolchain, without coverage
# guidance. For coverage-guided fuzzing of the same parsers see scripts/cargo-fuzz.sh.
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET]      (default 60; CASES_PER_RUN, default 20000)
set -euo pipefail
cd "$(dirname "$0")/.."
budget=${1:-60}
cases=${CASES_PER_RUN:-20000}

declare -A targets=(
  [credential]="properties::any_string_is_parsed_without_panicking properties::near_misses_of_real_keys_are_rejected properties::generated_credentials_round_trip"
  [routes]="properties::every_route_matches_its_own_paths_and_reads_the_application properties::any_method_and_path_are_matched_without_panicking"
  [policy]="properties::any_policy_text_is_judged_without_panicking properties::policy_like_text_is_judged_without_panicking"
  [search_params]="properties::any_search_params_are_judged_without_panicking properties::search_strings_round_trip"
  [scopes]="properties::a_scope_covers_itself_and_wildcards_cover_their_prefix properties::any_scope_text_is_judged_without_panicking"
)

cargo test --release --lib --no-run -q
for target in credential routes policy search_params scopes; do
  # shellcheck disable=SC2086
  set -- ${targets[$target]}
  tests=$#
  runs=0
  end=$((SECONDS + budget))
  while [ "$SECONDS" -lt "$end" ]; do
    PROPTEST_CASES=$cases cargo test --release --lib -q -- --exact "$@" >/dev/null
    runs=$((runs + 1))
  done
  echo "$target: $runs runs of $tests properties x $cases cases = $((runs * tests * cases)) cases, no failure"
done
