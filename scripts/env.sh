# Shared by the scripts: the build cache lives outside the clone so that repeated runs
# (and CI on a fresh clone) build incrementally.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/plume/target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
if ! command -v cargo >/dev/null 2>&1; then
  [ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
fi
if ! command -v cargo >/dev/null 2>&1; then
  echo "plume needs a Rust toolchain (cargo 1.88 or newer): https://rustup.rs" >&2
  exit 1
fi
