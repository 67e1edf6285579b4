#!/usr/bin/env bash
# Builds keygate's FROM scratch image (deploy/Containerfile) from a built binary:
#   scripts/build-image.sh [BINARY] [TAG]     (default target/release/keygate, localhost/keygate:latest)
# It stages a context with the binary (debug sections stripped), exactly the shared libraries
# `ldd` lists for it, the system's CA bundle, /etc/passwd and /etc/group with the keygate
# user (10001), and policy/default.toml as /etc/keygate/policy.toml, then runs podman build
# (docker build takes the same context: CONTAINER_TOOL=docker). KEEP_CONTEXT=DIR keeps the
# staged context there.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
binary="${1:-$root/target/release/keygate}"
tag="${2:-localhost/keygate:latest}"
tool="${CONTAINER_TOOL:-podman}"
[ -x "$binary" ] || { echo "error: $binary is not a built keygate binary (cargo build --release)" >&2; exit 1; }

context="${KEEP_CONTEXT:-$(mktemp -d)}"
[ -n "${KEEP_CONTEXT:-}" ] || trap 'rm -rf "$context"' EXIT
rm -rf "$context/rootfs" "$context/data"
mkdir -p "$context/rootfs/usr/bin" "$context/rootfs/etc/ssl/certs" "$context/rootfs/etc/keygate" "$context/data"

strip --strip-debug -o "$context/rootfs/usr/bin/keygate" "$binary"
chmod 755 "$context/rootfs/usr/bin/keygate"
# Each library by the path the binary asks for (the loader's too), its contents copied
# through any symlink. A statically linked binary has none.
ldd "$binary" | awk '/=> \//{print $3} /^\s*\//{print $1}' | while read -r lib; do
  mkdir -p "$context/rootfs$(dirname "$lib")"
  cp -L "$lib" "$context/rootfs$lib"
done
cp -L /etc/ssl/certs/ca-certificates.crt "$context/rootfs/etc/ssl/certs/ca-certificates.crt"
printf 'keygate:x:10001:10001:keygate:/var/lib/keygate:/nonexistent\n' > "$context/rootfs/etc/passwd"
printf 'keygate:x:10001:\n' > "$context/rootfs/etc/group"
cp "$root/policy/default.toml" "$context/rootfs/etc/keygate/policy.toml"
chmod -R u=rwX,go=rX "$context/rootfs"
cp "$root/deploy/Containerfile" "$context/Containerfile"

# docker format: OCI images have no HEALTHCHECK.
format=()
[ "$tool" = podman ] && format=(--format docker)
"$tool" build "${format[@]}" --tag "$tag" --file "$context/Containerfile" "$context"
