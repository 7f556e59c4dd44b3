#!/bin/sh
# Runs COMMAND inside the nested-KVM test host and exits with its exit status.
# usage: tests/host/run.sh [--mem MIB] [--timeout SECS] [--verbose] [--file HOST_PATH:TEST_HOST_PATH]... -- COMMAND [ARGS]
# Files are copied with the shared libraries they need; COMMAND is looked up in the test
# host's PATH (/usr/local/bin:/usr/bin:/bin...). Exit status 125 means the test host itself
# failed (timeout, crash); the last console lines are printed. KRUN_TESTHOST_VERBOSE=1 (or
# --verbose) echoes the console while it runs.
set -eu
root=$(cd "$(dirname "$0")/../.." && pwd)
cargo build --quiet --manifest-path "$root/Cargo.toml" -p krun-testhost --bin krun-testhost
exec "$root/target/debug/krun-testhost" "$@"
