#!/usr/bin/env bash
# Install t5pipe on every worker of a TPU VM slice (all slices with --num_slices > 1):
# a Python 3.11 virtual environment ~/t5pipe-venv with `pip install -e ~/t5pipe` and
# jax[tpu]. The code comes from a git repository (--repo_url, --ref) or from this checkout
# (--source=local: packed with tar, copied with `gcloud ... scp --worker=all`).
#
#   launch/tpu/setup.sh --zone=us-central2-b --tpu_name=t5                     # this checkout
#   launch/tpu/setup.sh --zone=us-central2-b --tpu_name=t5 --source=git \
#       --repo_url=https://github.com/you/t5pipe.git --ref=main
# shellcheck disable=SC2153  # upper-case settings are assigned by flag() in common.sh
set -euo pipefail
# shellcheck source=launch/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"

DESCRIPTION="Install t5pipe and jax[tpu] on all workers of a TPU VM slice."
tpu_flags
flag source local "where the code comes from: local (this checkout) or git"
flag source_dir "$(cd "$LAUNCH_DIR/.." && pwd)" "the checkout to copy with --source=local"
flag repo_url "" "git repository to clone with --source=git"
flag ref main "branch, tag or commit to check out with --source=git"
flag remote_dir t5pipe "where the code goes on each worker (relative to the home folder)"
flag venv_dir t5pipe-venv "virtual environment on each worker (relative to the home folder)"
flag worker_python python3.11 "Python on the workers (installed with apt-get when missing)"
flag jax_spec "jax[tpu]" "the JAX requirement installed next to t5pipe (its version range comes from setup.py)"
flag libtpu_find_links "https://storage.googleapis.com/jax-releases/libtpu_releases.html" "pip -f for libtpu ('' for none)"
parse_flags "$@"
resolve_tpu_flags
((${#ARGS[@]} == 0)) || die "unexpected arguments after --: ${ARGS[*]}"

remote_dir=$(shell_quote "$REMOTE_DIR")
venv_dir=$(shell_quote "$VENV_DIR")
python=$(shell_quote "$WORKER_PYTHON")
archive=t5pipe-src.tar.gz

case $SOURCE in
  local)
    [[ -f $SOURCE_DIR/setup.py ]] || die "--source_dir=$SOURCE_DIR is not a t5pipe checkout (no setup.py)"
    local_archive="${TMPDIR:-/tmp}/$archive"
    run tar -czf "$local_archive" -C "$SOURCE_DIR" --exclude=.git --exclude=.venv \
      --exclude=__pycache__ --exclude=.pytest_cache --exclude='*.egg-info' .
    while read -r node; do
      run gcloud compute tpus tpu-vm scp "$local_archive" "$node:$archive" "${GCLOUD_SCOPE[@]}" --worker=all
    done < <(tpu_node_names)
    fetch="rm -rf $remote_dir && mkdir -p $remote_dir && tar -xzf $archive -C $remote_dir"
    ;;
  git)
    require repo_url
    fetch="rm -rf $remote_dir && git clone --quiet $(shell_quote "$REPO_URL") $remote_dir"
    fetch+=" && git -C $remote_dir checkout --quiet $(shell_quote "$REF")"
    ;;
  *) die "--source=$SOURCE: expected local or git" ;;
esac

find_links=()
[[ -n $LIBTPU_FIND_LINKS ]] && find_links=(-f "$LIBTPU_FIND_LINKS")
steps=(
  # TPU VM images ship Ubuntu 22.04's Python 3.10; t5pipe needs 3.11.
  "(command -v $python >/dev/null || (sudo apt-get update -qq && sudo apt-get install -y -qq $python $python-venv))"
  "$fetch"
  "$python -m venv $venv_dir"
  "$venv_dir/bin/pip install --quiet --upgrade pip"
  "$venv_dir/bin/pip install --quiet -e $remote_dir $(shell_quote "$JAX_SPEC" "${find_links[@]}")"
  "$venv_dir/bin/t5pipe --help >/dev/null"
  "echo \"t5pipe installed on \$(hostname)\""
)
remote=$(printf ' && %s' "${steps[@]}")
tpu_ssh all "${remote# && }"
