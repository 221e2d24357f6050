#!/usr/bin/env bash
# Rewrites the seed corpora under fuzz/corpus/ from tests/transcripts/ (client
# bytes of every transcript) and the upstream/SASL seeds in fuzz/src/lib.rs.
# The writer is an ignored test in tests/fuzz_props.rs, so it parses the
# transcripts with the same code the fast properties use.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
rm -rf fuzz/corpus
cargo test --test fuzz_props -- --ignored --exact write_seed_corpora
find fuzz/corpus -type f | wc -l | xargs echo "seed files:"
