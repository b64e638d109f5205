# shellcheck shell=bash
# Shared by every launch script: flag parsing, --dry_run, quoting, gcloud scope, remote ssh.
#
# A script declares its flags, then parses:
#
#   flag   zone ""  "GCE zone"      # --zone=VALUE or --zone VALUE  -> $ZONE
#   switch spot     "Spot VM"       # --spot / --nospot             -> $SPOT (0 or 1)
#   multi  env      "NAME=VALUE"    # repeatable                    -> array ENV
#   parse_flags "$@"                # words after `--`              -> array ARGS
#
# Every setting can also come from the environment variable of the same name in upper
# case (ZONE, TPU_NAME, ACCELERATOR_TYPE, MODEL_DIR, ...); a flag wins over the
# environment, the environment over the default. `--dry_run` (or DRY_RUN=1) prints each
# command, quoted so that it can be pasted into a shell, instead of running it.

if ((BASH_VERSINFO[0] < 4 || (BASH_VERSINFO[0] == 4 && BASH_VERSINFO[1] < 3))); then
  echo "t5pipe launch scripts need bash >= 4.3 (this is ${BASH_VERSION}); on macOS: brew install bash" >&2
  exit 2
fi

LAUNCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
SCRIPT_NAME="$(basename "$0")"
export LAUNCH_DIR

_FLAG_ORDER=()
declare -A _FLAG_KIND=() _FLAG_HELP=()
ARGS=()

die() {
  echo "${SCRIPT_NAME}: error: $*" >&2
  exit 2
}

_flag_var() { # flag name -> variable name: accelerator_type -> ACCELERATOR_TYPE
  local name=$1
  printf '%s' "${name^^}"
}

flag() { # NAME DEFAULT HELP
  local name=$1 default=$2 help=$3 var
  var=$(_flag_var "$name")
  _FLAG_ORDER+=("$name")
  _FLAG_KIND[$name]=value
  _FLAG_HELP[$name]=$help
  if [[ -z ${!var+set} ]]; then
    printf -v "$var" '%s' "$default"
  fi
}

switch() { # NAME HELP ; the environment may say 1/0/true/false/yes/no
  local name=$1 help=$2 var
  var=$(_flag_var "$name")
  _FLAG_ORDER+=("$name")
  _FLAG_KIND[$name]=switch
  _FLAG_HELP[$name]=$help
  case "${!var:-0}" in
    1 | true | yes | True | TRUE) printf -v "$var" 1 ;;
    0 | false | no | False | FALSE | "") printf -v "$var" 0 ;;
    *) die "environment variable $var=${!var} is not a boolean (use 1 or 0)" ;;
  esac
}

multi() { # NAME HELP ; repeatable flag collected into an array
  local name=$1 help=$2 var
  var=$(_flag_var "$name")
  _FLAG_ORDER+=("$name")
  _FLAG_KIND[$name]=multi
  _FLAG_HELP[$name]=$help
  declare -g -a "$var"
  eval "$var=()"
}

usage() {
  local name var
  printf 'usage: %s [flags] %s\n\n%s\n\nflags (each also read from the environment variable in upper case):\n' \
    "$SCRIPT_NAME" "${USAGE_ARGS:-}" "${DESCRIPTION:-}"
  for name in "${_FLAG_ORDER[@]}"; do
    var=$(_flag_var "$name")
    case ${_FLAG_KIND[$name]} in
      value) printf '  --%-22s %s (now: %s)\n' "$name=VALUE" "${_FLAG_HELP[$name]}" "${!var:-unset}" ;;
      switch) printf '  --%-22s %s\n' "$name" "${_FLAG_HELP[$name]}" ;;
      multi) printf '  --%-22s %s (repeatable)\n' "$name=VALUE" "${_FLAG_HELP[$name]}" ;;
    esac
  done
}

parse_flags() {
  local arg name value var
  while (($#)); do
    arg=$1
    shift
    case $arg in
      --)
        ARGS=("$@")
        return 0
        ;;
      -h | --help)
        usage
        exit 0
        ;;
      --*) ;;
      *) die "unexpected argument '$arg' (flags are --name=VALUE; put the t5pipe command after --)" ;;
    esac
    name=${arg#--}
    value=
    local has_value=0
    if [[ $name == *=* ]]; then
      value=${name#*=}
      name=${name%%=*}
      has_value=1
    fi
    if [[ -z ${_FLAG_KIND[$name]+set} && $has_value == 0 && $name == no* &&
      ${_FLAG_KIND[${name#no}]:-} == switch ]]; then
      var=$(_flag_var "${name#no}")
      printf -v "$var" 0
      continue
    fi
    [[ -n ${_FLAG_KIND[$name]+set} ]] || die "unknown flag --$name (see --help)"
    var=$(_flag_var "$name")
    case ${_FLAG_KIND[$name]} in
      switch)
        ((has_value == 0)) || die "--$name takes no value"
        printf -v "$var" 1
        ;;
      value | multi)
        if ((has_value == 0)); then
          (($#)) || die "--$name needs a value"
          value=$1
          shift
        fi
        if [[ ${_FLAG_KIND[$name]} == value ]]; then
          printf -v "$var" '%s' "$value"
        else
          local -n list=$var
          list+=("$value")
          unset -n list
        fi
        ;;
    esac
  done
}

require() { # FLAG_NAME... : each must be set (by flag or environment)
  local name var
  for name in "$@"; do
    var=$(_flag_var "$name")
    [[ -n ${!var:-} ]] || die "--$name (or environment variable $var) is required"
  done
}

shell_quote() { # ARG... -> one line a POSIX shell reads back as the same words
  local arg words=()
  for arg in "$@"; do
    if [[ $arg =~ ^[A-Za-z0-9_@%+=:,./-]+$ ]]; then
      words+=("$arg")
    elif [[ $arg == *\'* && $arg != *[\$\`\"\\!]* ]]; then
      words+=("\"$arg\"") # {'inputs': 512} reads better in double quotes
    elif [[ $arg =~ ^(--[A-Za-z0-9_.-]+=)(.*)$ ]]; then
      # --flag='value' reads better than '--flag=value' and is the same word.
      words+=("${BASH_REMATCH[1]}'${BASH_REMATCH[2]//\'/\'\\\'\'}'")
    else
      words+=("'${arg//\'/\'\\\'\'}'")
    fi
  done
  printf '%s' "${words[*]}"
}

join_steps() { # STEP... -> one shell line; a step ending in `&` (background) takes no `;`
  local step line=
  for step in "$@"; do
    if [[ -z $line ]]; then
      line=$step
    elif [[ $line == *"&" ]]; then
      line+=" $step"
    else
      line+="; $step"
    fi
  done
  printf '%s' "$line"
}

run() { # COMMAND ARG... : print it (dry run) or echo it to stderr and run it
  if ((DRY_RUN)); then
    printf '%s\n' "$(shell_quote "$@")"
  else
    printf '+ %s\n' "$(shell_quote "$@")" >&2
    "$@"
  fi
}

# --- Cloud TPU -------------------------------------------------------------------------

tpu_flags() { # the settings every TPU script shares
  flag project "" "GCP project (default: gcloud's configured project)"
  flag zone "" "GCE zone of the TPU, e.g. us-central2-b (v4), us-west4-a (v5e)"
  flag tpu_name "" "TPU VM name (the node prefix when --num_slices > 1)"
  flag num_slices 1 "number of TPU slices (> 1: multi-slice through a queued resource)"
  flag queued_resource "" "queued resource id (default: TPU_NAME-qr)"
  switch dry_run "print the commands instead of running them"
}

resolve_tpu_flags() {
  require zone tpu_name
  [[ $NUM_SLICES =~ ^[1-9][0-9]*$ ]] || die "--num_slices=$NUM_SLICES is not a positive integer"
  QUEUED_RESOURCE=${QUEUED_RESOURCE:-${TPU_NAME}-qr}
  GCLOUD_SCOPE=("--zone=$ZONE")
  if [[ -n $PROJECT ]]; then
    GCLOUD_SCOPE+=("--project=$PROJECT")
  fi
}

tpu_ssh() { # WORKER COMMAND : run COMMAND (a shell line) on WORKER ("all" or an index)
  local worker=$1 command=$2
  if ((NUM_SLICES > 1)); then
    # A multi-slice queued resource: the same command on every worker of every slice.
    run gcloud compute tpus queued-resources ssh "$QUEUED_RESOURCE" "${GCLOUD_SCOPE[@]}" \
      --node=all "--worker=$worker" "--command=$command"
  else
    run gcloud compute tpus tpu-vm ssh "$TPU_NAME" "${GCLOUD_SCOPE[@]}" \
      "--worker=$worker" "--command=$command"
  fi
}

tpu_node_names() { # the TPU VM names: one, or NAME-0..NAME-(N-1) for a multi-slice request
  local i
  if ((NUM_SLICES > 1)); then
    for ((i = 0; i < NUM_SLICES; i++)); do
      printf '%s\n' "${TPU_NAME}-${i}"
    done
  else
    printf '%s\n' "$TPU_NAME"
  fi
}

# --- The t5pipe command ----------------------------------------------------------------

T5PIPE_COMMANDS=(train eval infer convert tasks)

check_t5pipe_args() { # the words after `--` must start with a t5pipe command
  ((${#ARGS[@]})) || die "give the t5pipe command after --, e.g. -- train --gin_file=runs/finetune.gin"
  local command
  for command in "${T5PIPE_COMMANDS[@]}"; do
    [[ ${ARGS[0]} == "$command" ]] && return 0
  done
  die "'${ARGS[0]}' is not a t5pipe command (one of: ${T5PIPE_COMMANDS[*]})"
}

add_model_dir_binding() { # `train` without --gin.MODEL_DIR gets MODEL_DIR from the settings
  local arg
  [[ ${ARGS[0]} == train && -n ${MODEL_DIR:-} ]] || return 0
  for arg in "${ARGS[@]}"; do
    [[ $arg == --gin.MODEL_DIR=* || $arg == --gin.MODEL_DIR ]] && return 0
  done
  ARGS+=("--gin.MODEL_DIR=$MODEL_DIR")
}

check_env_pairs() { # NAME=VALUE... : each a valid environment assignment
  local pair
  for pair in "$@"; do
    [[ $pair =~ ^[A-Za-z_][A-Za-z0-9_]*= ]] || die "--env '$pair' is not NAME=VALUE"
  done
}
