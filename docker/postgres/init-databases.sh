#!/usr/bin/env bash
# Runs once, on the first start of an empty PostgreSQL volume: one database per ShopRec store.
set -euo pipefail
for db in airflow mlflow shoprec_ledger shoprec_feast; do
    psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
        -c "CREATE DATABASE ${db} OWNER ${POSTGRES_USER}"
done
