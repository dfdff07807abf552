#!/usr/bin/env bash
# The project's two set-up commands, usable on a fresh machine:
#   ./run.sh up      start the embedded stack (demo CRM + ERP, broker, registry, capture, worker, Prometheus)
#   ./run.sh test    run the whole test suite
# Any other arguments are passed to the `crm-erp-sync` CLI inside the project's venv.
# Installs what is missing: Debian packages with apt-get (only if absent), Python deps into .venv,
# Apache Kafka / Kafka Connect / Debezium jars with Maven into ~/.cache/crm-erp-sync/jars.
set -euo pipefail
cd "$(dirname "$0")"
VENV="${CRM_ERP_SYNC_VENV:-.venv}"
PYTHON="${PYTHON:-python3}"

say() { printf '[run.sh] %s\n' "$*" >&2; }

ensure_debian_packages() {
  local missing=()
  compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || command -v initdb >/dev/null || missing+=(postgresql)
  command -v java >/dev/null || missing+=(default-jre-headless)
  command -v mvn >/dev/null || missing+=(maven)
  "$PYTHON" -c 'import venv, ensurepip' 2>/dev/null || missing+=(python3-venv)
  command -v prometheus >/dev/null && command -v promtool >/dev/null || missing+=(prometheus)
  if [ ${#missing[@]} -gt 0 ]; then
    if ! command -v apt-get >/dev/null; then
      say "missing: ${missing[*]}; install them with your package manager"; exit 1
    fi
    local sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
    say "installing Debian packages: ${missing[*]}"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
}

ensure_venv() {
  local stamp="$VENV/.installed" want
  want=$(sha256sum pyproject.toml | cut -d' ' -f1)
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then return; fi
  say "installing Python dependencies into $VENV"
  [ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip >/dev/null
  "$VENV/bin/python" -m pip install -q -e '.[test,dev]'
  echo "$want" > "$stamp"
}

ensure_jars() {
  # Apache Kafka, Kafka Connect and Debezium from Maven Central, once, into local.jar_cache (outside the repo).
  "$VENV/bin/python" -m streams.local.jars
}

ensure_debian_packages
ensure_venv
ensure_jars

case "${1:-}" in
  test)
    shift
    # pytest exits 5 when nothing was collected: that is a failure here, not a pass.
    exec "$VENV/bin/python" -m pytest "$@"
    ;;
  "")
    exec "$VENV/bin/crm-erp-sync" --help
    ;;
  *)
    exec "$VENV/bin/crm-erp-sync" "$@"
    ;;
esac
