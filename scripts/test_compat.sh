#!/usr/bin/env bash
# make test-compat: the unit tests and ansible-test sanity of the collection on every ansible-core release it
# supports (requirements/compat/matrix.txt), each in a virtualenv of its own, pinned by
# requirements/compat/ansible-core-<minor>.txt and kept in the cache until that file or its matrix line changes.
#
# usage: scripts/test_compat.sh COLLECTION_DIR [ANSIBLE_CORE_VERSION...]
#   COLLECTION_DIR  the collection as Ansible sees it (.../ansible_collections/kubeha/apiserver, `make collection`)
#   versions        a subset of the matrix (default: all of it)
set -euo pipefail
cd "$(dirname "$0")/.."

coll=${1:?usage: scripts/test_compat.sh COLLECTION_DIR [ANSIBLE_CORE_VERSION...]}
coll=$(cd "$coll" && pwd)
shift
cache=${KUBEHA_CACHE:-/var/cache/kubeha}
# ansible-test keeps its sanity virtualenvs under $HOME/.ansible/test: the home `make sanity` gives it, too.
ansible_test_home=$cache/ansible-test-home
log() { printf '[test-compat] %s\n' "$*" >&2; }

matrix=()
while read -r core python ansible; do
  [[ -z $core || $core == \#* ]] && continue
  matrix+=("$core $python $ansible")
done <requirements/compat/matrix.txt
if (($#)); then
  wanted=" $* "
  selected=()
  for line in "${matrix[@]}"; do
    [[ $wanted == *" ${line%% *} "* ]] && selected+=("$line")
  done
  ((${#selected[@]} == $#)) || { log "not in requirements/compat/matrix.txt: $*"; exit 2; }
  matrix=("${selected[@]}")
fi

# An interpreter of the given X.Y: on PATH, else one that pyenv has installed.
find_python() {
  local want=$1 candidate
  for candidate in "$(command -v "python$want" || true)" "$(pyenv root 2>/dev/null)"/versions/"$want".*/bin/python"$want"; do
    [[ -x $candidate ]] && "$candidate" -c 'import sys; sys.exit(0)' 2>/dev/null && { echo "$candidate"; return; }
  done
  log "no Python $want found (on PATH or in pyenv): install it to test that row of requirements/compat/matrix.txt"
  return 1
}

# The virtualenv of one ansible-core release: the pinned requirements, then community.crypto taken from the
# `ansible` release of the matrix (its wheel holds the collection; only that directory is unpacked).
ensure_venv() {
  local core=$1 python=$2 ansible=$3 venv=$4
  local requirements=requirements/compat/ansible-core-${core%.*}.txt
  local want stamp=$venv/.compat.sha256
  want=$({ cat "$requirements"; echo "$core $python $ansible"; } | sha256sum | cut -c1-64)
  [[ $(cat "$stamp" 2>/dev/null) == "$want" ]] && return
  log "ansible-core $core: creating $venv from $requirements"
  rm -rf "$venv"
  "$(find_python "$python")" -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check --no-deps -r "$requirements"
  "$venv/bin/pip" check --disable-pip-version-check >/dev/null || {
    "$venv/bin/pip" check --disable-pip-version-check
    log "$requirements does not pin every dependency"
    return 1
  }
  local wheels=$cache/compat/wheels
  mkdir -p "$wheels"
  if ! compgen -G "$wheels/ansible-$ansible-py3-none-any.whl" >/dev/null; then
    "$venv/bin/pip" download -q --disable-pip-version-check --no-deps --only-binary=:all: -d "$wheels" "ansible==$ansible"
  fi
  "$venv/bin/python" - "$wheels/ansible-$ansible-py3-none-any.whl" <<'EOF'
import sys
import sysconfig
import zipfile

prefix = "ansible_collections/community/crypto/"
with zipfile.ZipFile(sys.argv[1]) as wheel:
    members = [name for name in wheel.namelist() if name.startswith(prefix)]
    if not members:
        sys.exit(f"{sys.argv[1]} holds no {prefix}")
    wheel.extractall(sysconfig.get_paths()["purelib"], members)
EOF
  echo "$want" >"$stamp"
}

# ansible-test bootstraps pip in its sanity virtualenvs with a get-pip script named after the pip it wants;
# the project's stand-in installs from the package index instead.
install_get_pip() {
  local venv=$1 python=$2 pip_version
  pip_version=$("$venv/bin/python" - "$python" <<'EOF'
import sys
import types

from ansible_test._internal.python_requirements import get_venv_packages

print(get_venv_packages(types.SimpleNamespace(version=sys.argv[1]))["pip"])
EOF
  )
  install -D -m 644 scripts/ansible-test-get-pip.py \
    "$ansible_test_home/.ansible/test/cache/get_pip_${pip_version//./_}.py"
}

results=()
failed=0
for line in "${matrix[@]}"; do
  read -r core python ansible <<<"$line"
  venv=$cache/compat/$core
  started=$SECONDS
  ensure_venv "$core" "$python" "$ansible" "$venv"
  install_get_pip "$venv" "$python"
  prepared=$((SECONDS - started))

  log "ansible-core $core (Python $python): unit tests"
  started=$SECONDS
  unit=passed
  # tests/unit/bench and tests/unit/lab test the bench's and the lab's own tools, which run from .venv only
  (cd "$coll" && "$venv/bin/python" -m pytest tests/unit -q -p no:cacheprovider \
    --ignore=tests/unit/bench --ignore=tests/unit/lab --ignore=tests/unit/packaging/test_docs_site.py) || unit=FAILED
  unit_s=$((SECONDS - started))

  log "ansible-core $core (Python $python): ansible-test sanity"
  started=$SECONDS
  sanity=passed
  (cd "$coll" && PATH=$venv/bin:$PATH HOME=$ansible_test_home \
    "$venv/bin/ansible-test" sanity --python "$python" --venv --requirements --color no) || sanity=FAILED
  sanity_s=$((SECONDS - started))

  [[ $unit == passed && $sanity == passed ]] || failed=1
  results+=("$(printf '%-12s %-7s %-7s %5ss  %-7s %5ss  %5ss' \
    "$core" "$python" "$unit" "$unit_s" "$sanity" "$sanity_s" "$prepared")")
done

printf '\n%-12s %-7s %-7s %6s  %-7s %6s  %6s\n' ansible-core python unit time sanity time venv
printf '%s\n' "${results[@]}"
exit "$failed"
