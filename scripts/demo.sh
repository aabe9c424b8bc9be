#!/usr/bin/env bash
# `make demo`: the Vigil demo. With a Docker engine: docker compose (Grafana, Loki, everything).
# Without one: the same stack from local binaries, minus Grafana and Loki (demo/run_local.py).
#
#   DEMO_NO_DOCKER=1 make demo    force the local mode
#   DEMO_PORT=18080 ...           other ports: see demo/run_local.py
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}

docker_engine() {
  [ -z "${DEMO_NO_DOCKER:-}" ] || return 1
  command -v docker >/dev/null 2>&1 || return 1
  timeout 15 docker info >/dev/null 2>&1 || return 1
  timeout 15 docker compose version >/dev/null 2>&1
}

if docker_engine; then
  if [ ! -f .env ]; then
    # First run: secrets from .env.example with a random token and password instead of placeholders.
    token=$("$PY" -c 'import secrets; print(secrets.token_urlsafe(24))')
    password=$("$PY" -c 'import secrets; print(secrets.token_urlsafe(12))')
    sed -e "s|^VIGIL_SERVER_TOKEN=.*|VIGIL_SERVER_TOKEN=$token|" \
        -e "s|^GRAFANA_ADMIN_PASSWORD=.*|GRAFANA_ADMIN_PASSWORD=$password|" .env.example > .env
    chmod 600 .env
    echo "wrote .env (Grafana admin password and Vigil token are in it)"
  fi
  docker compose up -d --build --wait --wait-timeout 600
  # shellcheck disable=SC1091
  set -a; . ./.env; set +a
  cat <<MSG

Vigil demo is running in Docker (docker compose ps; docker compose logs -f vigil-worker).

  Grafana        http://localhost:3000   user ${GRAFANA_ADMIN_USER:-admin}, password in .env
                 dashboards in the "Vigil" folder; anomalies appear as annotations within minutes
  Vigil service  http://localhost:8080/healthz   (bearer token: VIGIL_SERVER_TOKEN in .env)
  Prometheus     http://localhost:9090          Alertmanager http://localhost:9093
  Logs in Grafana > Explore > Loki: {container=~".*vigil.*"} | json

  docker compose exec vigil-worker vigil audit --config /etc/vigil/vigil.yaml --since 2h
  docker compose down -v     stops it and deletes its data
MSG
  exit 0
fi

echo "No Docker engine answers: running the demo from local binaries (no Grafana, no Loki)."
exec "$PY" demo/run_local.py
