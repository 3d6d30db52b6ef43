#!/usr/bin/env bash
# Build promtool (Prometheus's rule and config checker) from the Go module proxy, at a pinned version, to
# check and test the example alert rules under examples/prometheus. The result is cached outside the
# repository, keyed by version, so a warm machine skips this. Prints the path of the binary.
set -euo pipefail

PROMETHEUS_VERSION=${PROMETHEUS_VERSION:-v0.316.0}

cache=${KUBEHA_CACHE:-/var/cache/kubeha}
out="$cache/bin/promtool-$PROMETHEUS_VERSION"

log() { printf '[build] %s\n' "$*" >&2; }

if [[ -f $out/.complete ]]; then
  echo "$out/promtool"
  exit 0
fi

mkdir -p "$out" "$cache/gobuild"
# One build at a time (parallel test runs): the second waits, then finds the first one's result.
exec 9>"$out.lock"
flock 9
if [[ -f $out/.complete ]]; then
  echo "$out/promtool"
  exit 0
fi
export GOFLAGS=-mod=mod GOTOOLCHAIN=local CGO_ENABLED=0

# A module of our own that requires github.com/prometheus/prometheus (a plain `go install` of a module with
# a go directive newer than the local toolchain's would try to fetch another toolchain).
mod="$cache/gobuild/promtool-$PROMETHEUS_VERSION"
mkdir -p "$mod"
if [[ ! -f $mod/go.mod ]]; then
  log "resolving github.com/prometheus/prometheus@$PROMETHEUS_VERSION"
  upstream_mod=$(go mod download -json "github.com/prometheus/prometheus@$PROMETHEUS_VERSION" |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["GoMod"])')
  {
    echo "module kubeha.local/promtoolbuild"
    echo "go $(awk '$1=="go"{print $2; exit}' "$upstream_mod")"
    echo "require github.com/prometheus/prometheus $PROMETHEUS_VERSION"
  } >"$mod/go.mod.tmp"
  mv "$mod/go.mod.tmp" "$mod/go.mod"
fi

# github.com/prometheus/prometheus v0.X.Y is Prometheus 3.X.Y.
minor=$(cut -d. -f2 <<<"$PROMETHEUS_VERSION")
patch=$(cut -d. -f3 <<<"$PROMETHEUS_VERSION")
ldflags="-s -w -X github.com/prometheus/common/version.Version=3.$((10#${minor:1})).$patch"
ldflags+=" -X github.com/prometheus/common/version.Revision=$PROMETHEUS_VERSION"

log "building promtool $PROMETHEUS_VERSION (cold: several minutes on 2 cores)"
start=$SECONDS
(cd "$mod" && go build -trimpath -ldflags "$ldflags" -o "$out/promtool" github.com/prometheus/prometheus/cmd/promtool)
log "promtool built in $((SECONDS - start)) s"

"$out/promtool" --version >&2
touch "$out/.complete"
echo "$out/promtool"
