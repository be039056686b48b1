# Sourced by the bench and build scripts: installs from apt what the machine lacks.

# apt_need COMMAND:PACKAGE...: installs, in one apt run, the package of each command that is
# not on PATH (updating the package index and retrying once if the first try fails). Returns
# non-zero if the install fails.
apt_need() {
  local need=() c
  for c in "$@"; do
    command -v "${c%%:*}" >/dev/null || need+=("${c##*:}")
  done
  [ ${#need[@]} -eq 0 ] && return 0
  printf '[%s] installing %s (apt)\n' "$(date +%H:%M:%S)" "${need[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -q "${need[@]}" >/dev/null 2>&1 || {
    apt-get update -q >/dev/null && apt-get install -y -q "${need[@]}" >/dev/null
  }
}
