# Sourced by the scripts that serve a folder to a browser (demo, test-wasm-browser, test-npm,
# bench-browser): `serve [--isolated] DIR PORT` starts pkg-scripts/serve-faults in the
# background, waits until it printed its bound port, and sets $port (the bound port) and
# $server (its pid). The server is killed when the calling script exits, Ctrl-C included.
serve() {
  local portfile
  portfile=$(mktemp)
  python3 "$(dirname "${BASH_SOURCE[0]}")/serve-faults" "$@" >"$portfile" &
  server=$!
  # shellcheck disable=SC2064 # expand now: the trap outlives this function's locals
  trap "kill $server 2>/dev/null || true; rm -f '$portfile'" EXIT
  trap 'exit 130' INT TERM
  for _ in $(seq 100); do
    [ -s "$portfile" ] && break
    kill -0 "$server" 2>/dev/null || break
    sleep 0.1
  done
  port=$(head -n 1 "$portfile")
  [ -n "$port" ] || { echo "$(basename "$0"): the server (serve-faults $*) did not start" >&2; exit 1; }
}
