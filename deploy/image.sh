#!/usr/bin/env bash
# `make image`: the walcast image from deploy/Dockerfile where no registry of images is
# reachable, with podman and mmdebstrap (as root):
#   1. the build stage: its context is copied as its COPY lines say (nothing else of the
#      repository) and its cargo command runs there (into this repository's target/, so
#      the dependencies built before are used), so a file the Dockerfile forgets fails
#      here as it would in `docker build`; the binary is stripped of its debug info as
#      the stage does;
#   2. the base: Debian's libc6, libgcc-s1 and base-files unpacked by mmdebstrap (no
#      shell, no package manager), imported once as $BASE_IMAGE;
#   3. the runtime stage: the Dockerfile's last stage as written, built by podman on that
#      base, with the build stage's outputs (the binary, the CA bundle) from step 1 and
#      the host's Debian bundle.
# Then the image's size is printed. IMAGE (default walcast:latest) names the result;
# REBUILD_BASE=1 makes the base again.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
dockerfile=$root/deploy/Dockerfile
image=${IMAGE:-walcast:latest}
work=$root/target/image
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$root/target}

fail() { echo "image: $*" >&2; exit 1; }
for tool in podman mmdebstrap; do
  command -v "$tool" >/dev/null 2>&1 ||
    fail "$tool missing: run 'make deps-deploy' (apt-get install -y podman mmdebstrap)"
done
[ "$(id -u)" = 0 ] || fail "needs root (podman's image store, mmdebstrap): run it with sudo"

# The host's Debian release: the binary is linked against its glibc, so the base is the same.
. /etc/os-release
suite=${VERSION_CODENAME:?no VERSION_CODENAME in /etc/os-release}
base_image=${BASE_IMAGE:-localhost/walcast-base:$suite}

# 1. The build stage, in a copy of its context.
stage() { awk '/^FROM .* AS build$/ { on = 1; next } /^FROM / { on = 0 } on' "$dockerfile"; }
[ "$(stage | awk '$1 == "WORKDIR" { print $2 }')" = /src ] || fail "the build stage's WORKDIR is not /src"
build_cmd=$(stage | sed -n 's/^RUN //p')
known="cargo build --release --locked --bin walcast && strip --strip-debug target/release/walcast"
[ "$build_cmd" = "$known" ] || fail "the build stage runs '$build_cmd'; deploy/image.sh knows '$known'"
context=$work/context
rm -rf "$context"
mkdir -p "$context"
while read -r -a copy; do
  dest=${copy[-1]}
  unset 'copy[-1]'
  for src in "${copy[@]}"; do
    case $dest in
      */) mkdir -p "$context/$dest" && cp -a "$root/$src" "$context/$dest" ;;
      *) mkdir -p "$(dirname "$context/$dest")" && cp -a "$root/$src" "$context/$dest" ;;
    esac
  done
done < <(stage | sed -n 's/^COPY //p')
echo "image: building the binary in the build stage's context ($context)"
(cd "$context" && cargo build --release --locked --bin walcast)
binary=$CARGO_TARGET_DIR/release/walcast

# 2. The base.
if [ -n "${REBUILD_BASE:-}" ] || ! podman image exists "$base_image"; then
  sources=/etc/apt/sources.list.d/debian.sources
  [ -f "$sources" ] || sources=/etc/apt/sources.list
  echo "image: making the base $base_image (mmdebstrap, $suite, this host's apt sources)"
  rm -f "$work/base.tar"
  mmdebstrap --quiet --variant=extract --include=base-files,libc6,libgcc-s1 \
    --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/locale/*' \
    --dpkgopt='path-exclude=/usr/share/man/*' \
    "$suite" "$work/base.tar" "$sources"
  podman import --quiet "$work/base.tar" "$base_image" >/dev/null
  rm -f "$work/base.tar"
fi

# 3. The runtime stage, on the base, from the build stage's outputs.
final=$work/final
rm -rf "$final"
mkdir -p "$final"
strip --strip-debug -o "$final/walcast" "$binary"
[ -f /etc/ssl/certs/ca-certificates.crt ] ||
  fail "/etc/ssl/certs/ca-certificates.crt missing: apt-get install -y ca-certificates"
cp /etc/ssl/certs/ca-certificates.crt "$final/"
{
  sed -n '/^FROM /q; /^ARG /p' "$dockerfile"
  echo "FROM scratch AS build"
  echo "COPY walcast /src/target/release/walcast"
  echo "COPY ca-certificates.crt /etc/ssl/certs/ca-certificates.crt"
  awk '/^FROM / { last = NR } { line[NR] = $0 } END { for (i = last; i <= NR; i++) print line[i] }' "$dockerfile"
} > "$final/Containerfile"
echo "image: building $image on $base_image"
previous=$(podman image inspect --format '{{.Id}}' "$image" 2>/dev/null || true)
podman build --quiet --layers=false --pull=never --build-arg "BASE=$base_image" -t "$image" \
  -f "$final/Containerfile" "$final" >/dev/null
# The image this one replaces, unless something else still uses it.
if [ -n "$previous" ] && [ "$previous" != "$(podman image inspect --format '{{.Id}}' "$image")" ]; then
  podman rmi "$previous" >/dev/null 2>&1 || true
fi
binary_size=$(stat -c %s "$final/walcast")
rm -rf "$final" "$context"

size=$(podman image inspect --format '{{.Size}}' "$image")
base_size=$(podman image inspect --format '{{.Size}}' "$base_image")
echo "image: $image: $((size / 1000000)) MB ($size bytes: the base $((base_size / 1000000)) MB, walcast $((binary_size / 1000000)) MB)"
