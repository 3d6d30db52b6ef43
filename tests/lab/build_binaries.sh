#!/usr/bin/env bash
# Build the official Kubernetes and etcd binaries the lab runs, from the Go module proxy, at pinned
# versions. Results are cached outside the repository, keyed by version, so a warm machine skips this.
# Users who downloaded release tarballs can point KUBEHA_K8S_BIN_DIR at a directory holding the binaries.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=tests/lab/versions.env
. "$here/versions.env"
# The previous minor (make test-k8s-previous) builds and runs with KUBEHA_K8S_VERSION=$K8S_VERSION_PREVIOUS.
K8S_VERSION=${KUBEHA_K8S_VERSION:-$K8S_VERSION}

cache=${KUBEHA_CACHE:-/var/cache/kubeha}
out="$cache/bin/k8s-$K8S_VERSION-etcd-$ETCD_VERSION"
k8s_bins=(kube-apiserver kube-controller-manager kube-scheduler kube-proxy kubeadm kubectl kubelet)

log() { printf '[build] %s\n' "$*" >&2; }

if [[ -n ${KUBEHA_K8S_BIN_DIR:-} ]]; then
  for b in "${k8s_bins[@]}" etcd; do
    [[ -x $KUBEHA_K8S_BIN_DIR/$b ]] || { log "KUBEHA_K8S_BIN_DIR=$KUBEHA_K8S_BIN_DIR lacks $b"; exit 1; }
  done
  echo "$KUBEHA_K8S_BIN_DIR"
  exit 0
fi

# .complete marks a finished build; a binary added to the list since then is built on its own below.
missing=0
for b in "${k8s_bins[@]}" etcd; do [[ -x $out/$b ]] || missing=1; done
if [[ -f $out/.complete ]] && ((missing == 0)); then
  echo "$out"
  exit 0
fi

mkdir -p "$out" "$cache/gobuild"
export GOFLAGS=-mod=mod GOTOOLCHAIN=local CGO_ENABLED=0

# kubernetes: a module of our own that requires k8s.io/kubernetes and replaces each staging module
# (k8s.io/kubernetes's go.mod points them at ./staging, which `go install` refuses) with its published tag.
k8s_mod="$cache/gobuild/k8s-$K8S_VERSION"
mkdir -p "$k8s_mod"
if [[ ! -f $k8s_mod/go.mod ]]; then
  log "resolving k8s.io/kubernetes@$K8S_VERSION"
  upstream_mod=$(go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | python3 -c 'import json,sys; print(json.load(sys.stdin)["GoMod"])')
  staging_ver="v0.${K8S_VERSION#v1.}"
  {
    echo "module kubeha.local/k8sbuild"
    echo "go $(awk '$1=="go"{print $2; exit}' "$upstream_mod")"
    echo "require k8s.io/kubernetes $K8S_VERSION"
    awk -v v="$staging_ver" '$2=="=>" && $3 ~ /^\.\/staging\// {print "replace " $1 " => " $1 " " v}' "$upstream_mod"
  } >"$k8s_mod/go.mod.tmp"
  mv "$k8s_mod/go.mod.tmp" "$k8s_mod/go.mod"
fi

ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  ldflags+=" -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=1"
  ldflags+=" -X $pkg.gitMinor=$(cut -d. -f2 <<<"$K8S_VERSION") -X $pkg.gitTreeState=clean"
  ldflags+=" -X $pkg.buildDate=1970-01-01T00:00:00Z"
done

pkgs=()
for b in "${k8s_bins[@]}"; do
  [[ -x $out/$b ]] || pkgs+=("k8s.io/kubernetes/cmd/$b")
done
if ((${#pkgs[@]})); then
  log "building ${pkgs[*]##*/} $K8S_VERSION (cold: tens of minutes on 2 cores)"
  start=$SECONDS
  (cd "$k8s_mod" && go build -trimpath -ldflags "$ldflags" -o "$out/" "${pkgs[@]}")
  log "kubernetes built in $((SECONDS - start)) s"
fi

etcd_mod="$cache/gobuild/etcd-$ETCD_VERSION"
if [[ ! -x $out/etcd ]]; then
  mkdir -p "$etcd_mod"
  if [[ ! -f $etcd_mod/go.mod ]]; then
    printf 'module kubeha.local/etcdbuild\ngo 1.24\nrequire go.etcd.io/etcd/server/v3 %s\n' "$ETCD_VERSION" >"$etcd_mod/go.mod"
  fi
  log "building etcd $ETCD_VERSION"
  start=$SECONDS
  (cd "$etcd_mod" && go build -trimpath -ldflags "-s -w" -o "$out/etcd" go.etcd.io/etcd/server/v3)
  log "etcd built in $((SECONDS - start)) s"
fi

"$out/kube-apiserver" --version >&2
"$out/etcd" --version | head -1 >&2
touch "$out/.complete"
echo "$out"
