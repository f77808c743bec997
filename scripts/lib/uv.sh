# Sourced by scripts/test and scripts/demo: makes sure `uv` is on PATH (from PyPI,
# into target/test-tools, when this machine has none) and that the uv wheel the
# agent pins is at hand for the stand-in package index. Needs python3 with pip.

COMFYFLEET_UV_VERSION=0.13.9
comfyfleet_tools="${CARGO_TARGET_DIR:-$PWD/target}/test-tools"

ensure_uv() {
  if ! command -v uv >/dev/null 2>&1; then
    if [[ ! -x "$comfyfleet_tools/uv/bin/uv" ]]; then
      python3 -m pip install --quiet --disable-pip-version-check --target "$comfyfleet_tools/uv" \
        "uv==$COMFYFLEET_UV_VERSION"
    fi
    export PATH="$comfyfleet_tools/uv/bin:$PATH"
  fi
}

# The agent's pinned uv wheel for this machine's architecture, in
# $COMFYFLEET_TEST_UV_WHEELS (a test serves it to an agent that has no uv).
ensure_uv_wheel() {
  local platform
  case "$(uname -m)" in
    x86_64) platform=manylinux_2_17_x86_64 ;;
    aarch64) platform=manylinux_2_17_aarch64 ;;
    *) platform="" ;;
  esac
  if [[ -n "$platform" ]] && ! ls "$comfyfleet_tools/wheels"/uv-"$COMFYFLEET_UV_VERSION"-*.whl >/dev/null 2>&1; then
    python3 -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
      --platform "$platform" --dest "$comfyfleet_tools/wheels" "uv==$COMFYFLEET_UV_VERSION"
  fi
  export COMFYFLEET_TEST_UV_WHEELS="$comfyfleet_tools/wheels"
}
