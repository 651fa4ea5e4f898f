"""docker/docker-compose.yml is a valid Compose file and keeps the production security defaults.

Docker cannot run on the development machines, so the file is checked offline: interpolated the way
``docker compose`` does (with throw-away values for the secrets), then validated against the Compose
Specification's JSON schema (tests/data/compose-spec.json), then checked for what issue 8 requires.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker" / "docker-compose.yml"
ENV_EXAMPLE = ROOT / "docker" / ".env.example"
SCHEMA_FILE = ROOT / "tests" / "data" / "compose-spec.json"

SECRETS = (
    "POSTGRES_PASSWORD",
    "REDIS_PASSWORD",
    "AIRFLOW_ADMIN_PASSWORD",
    "AIRFLOW_JWT_SECRET",
    "AIRFLOW_API_SECRET_KEY",
    "AIRFLOW_FERNET_KEY",
    "SHOPREC_PSEUDONYM_KEY",
    "SHOPREC_LEDGER_KEY",
    "SHOPREC_LEDGER_APP_PASSWORD",
    "MINIO_ROOT_PASSWORD",
    "SHOPREC_ARTIFACT_STORE_KEY_ID",
    "SHOPREC_ARTIFACT_STORE_SECRET",
)
AIRFLOW_SERVICES = (
    "airflow-apiserver",
    "airflow-scheduler",
    "airflow-dag-processor",
    "airflow-triggerer",
    "airflow-worker-cpu",
    "airflow-worker-gpu",
)
_VARIABLE = re.compile(r"\$\$|\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}")


class MissingVariable(LookupError):
    """A ``${VAR:?message}`` whose variable is unset, as ``docker compose`` reports it."""


def interpolate(text: str, env: Mapping[str, str]) -> str:
    """Compose-style interpolation: ``${V}``, ``${V:-default}``, ``${V-default}``, ``${V:?err}``, ``$$``."""

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name, op, arg = match.group("name"), match.group("op"), match.group("arg")
        value = env.get(name)
        if op in (":-", ":?") and not value:
            value = None
        if value is not None:
            return value
        if op in (":?", "?"):
            raise MissingVariable(f"{name}: {arg}")
        return arg if op in (":-", "-") else ""

    return _VARIABLE.sub(replace, text)


def _secrets_env() -> dict[str, str]:
    return {name: f"test-{name.lower()}-" + "x" * 64 for name in SECRETS}


def _interpolate_values(node: Any, env: Mapping[str, str]) -> Any:
    if isinstance(node, str):
        return interpolate(node, env)
    if isinstance(node, dict):
        return {key: _interpolate_values(value, env) for key, value in node.items()}
    if isinstance(node, list):
        return [_interpolate_values(value, env) for value in node]
    return node


def load_compose(env: Mapping[str, str]) -> dict[str, Any]:
    """Parse, then interpolate every string value (compose interpolates values, not comments)."""
    document: dict[str, Any] = _interpolate_values(yaml.safe_load(COMPOSE_FILE.read_text()), env)
    return document


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load_compose(_secrets_env())


def test_compose_file_validates_against_compose_spec_schema(compose: dict[str, Any]) -> None:
    schema = json.loads(SCHEMA_FILE.read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    errors = sorted(jsonschema.Draft7Validator(schema).iter_errors(compose), key=str)
    assert [f"{list(e.absolute_path)}: {e.message}" for e in errors] == []


def test_schema_rejects_an_unknown_service_key(compose: dict[str, Any]) -> None:
    """The schema check can fail: a misspelt key is an error."""
    broken = json.loads(json.dumps(compose))
    broken["services"]["redis"]["helthcheck"] = {}
    validator = jsonschema.Draft7Validator(json.loads(SCHEMA_FILE.read_text()))
    assert not validator.is_valid(broken)


@pytest.mark.parametrize("secret", SECRETS)
def test_compose_refuses_to_start_without_each_secret(secret: str) -> None:
    env = _secrets_env()
    del env[secret]
    with pytest.raises(MissingVariable, match=secret):
        load_compose(env)


def test_stack_has_every_production_service(compose: dict[str, Any]) -> None:
    assert set(compose["services"]) == {
        "postgres",
        "redis",
        "airflow-init",
        *AIRFLOW_SERVICES,
        "mlflow",
        "feast",
        "minio",
        "minio-init",
    }


def test_every_published_port_binds_loopback_by_default(compose: dict[str, Any]) -> None:
    published = {
        name: port for name, service in compose["services"].items() for port in service.get("ports", [])
    }
    assert set(published) == {"postgres", "redis", "airflow-apiserver", "mlflow", "feast", "minio"}
    assert all(str(port).startswith("127.0.0.1:") for port in published.values()), published


def test_gpu_worker_serves_only_the_gpu_queue_with_an_nvidia_reservation(compose: dict[str, Any]) -> None:
    worker = compose["services"]["airflow-worker-gpu"]
    command = worker["command"]
    assert command[command.index("--queues") + 1] == "gpu"
    assert command[command.index("--celery-hostname") + 1].startswith("gpu@")
    assert worker["build"]["dockerfile"] == "docker/Dockerfile.trainer"
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": "1", "capabilities": ["gpu"]}]


def test_cpu_worker_serves_only_the_default_queue(compose: dict[str, Any]) -> None:
    command = compose["services"]["airflow-worker-cpu"]["command"]
    assert command[command.index("--queues") + 1] == "default"
    assert "deploy" not in compose["services"]["airflow-worker-cpu"]


@pytest.mark.parametrize("service", AIRFLOW_SERVICES)
def test_airflow_services_run_celery_on_postgres_with_the_env_jwt_secret(
    compose: dict[str, Any], service: str
) -> None:
    env = compose["services"][service]["environment"]
    assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("postgresql+psycopg2://")
    assert env["AIRFLOW__API_AUTH__JWT_SECRET"] == _secrets_env()["AIRFLOW_JWT_SECRET"]
    assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == "http://airflow-apiserver:8080/execution/"
    assert env["SHOPREC_PROFILE"] == "production"


def test_env_example_names_every_secret_with_an_empty_value() -> None:
    values = dict(
        line.split("=", 1)
        for line in ENV_EXAMPLE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    )
    assert {name: values.get(name) for name in SECRETS} == dict.fromkeys(SECRETS, "")


@pytest.mark.parametrize("service", [*AIRFLOW_SERVICES, "feast"])
def test_airflow_services_use_the_minio_bucket_as_artifact_store_with_credentials_from_env(
    compose: dict[str, Any], service: str
) -> None:
    env = compose["services"][service]["environment"]
    secrets = _secrets_env()
    assert env["SHOPREC_ARTIFACT_STORE_URL"] == "s3://shoprec-artifacts/shoprec"
    assert env["SHOPREC_ARTIFACT_STORE_ENDPOINT_URL"] == "http://minio:9000"
    assert env["SHOPREC_ARTIFACT_STORE_KEY_ID"] == secrets["SHOPREC_ARTIFACT_STORE_KEY_ID"]
    assert env["SHOPREC_ARTIFACT_STORE_SECRET"] == secrets["SHOPREC_ARTIFACT_STORE_SECRET"]
    assert "MINIO_ROOT_PASSWORD" not in env  # the services never hold MinIO's root credentials


def test_the_bucket_and_the_endpoint_can_be_pointed_elsewhere() -> None:
    env = {
        **_secrets_env(),
        "SHOPREC_ARTIFACT_BUCKET": "acme-shoprec",
        "SHOPREC_ARTIFACT_STORE_ENDPOINT_URL": "https://s3.eu-west-1.amazonaws.com",
    }
    services = load_compose(env)["services"]
    worker = services["airflow-worker-gpu"]["environment"]
    assert worker["SHOPREC_ARTIFACT_STORE_URL"] == "s3://acme-shoprec/shoprec"
    assert worker["SHOPREC_ARTIFACT_STORE_ENDPOINT_URL"] == "https://s3.eu-west-1.amazonaws.com"
    assert services["minio-init"]["environment"]["BUCKET"] == "acme-shoprec"


def test_minio_and_its_client_images_are_pinned_releases(compose: dict[str, Any]) -> None:
    assert re.fullmatch(
        r"minio/minio:RELEASE\.\d{4}-\d\d-\d\dT\d\d-\d\d-\d\dZ", compose["services"]["minio"]["image"]
    )
    assert re.fullmatch(
        r"minio/mc:RELEASE\.\d{4}-\d\d-\d\dT\d\d-\d\d-\d\dZ", compose["services"]["minio-init"]["image"]
    )


def test_minio_init_makes_the_private_bucket_and_a_user_limited_to_it(compose: dict[str, Any]) -> None:
    init = compose["services"]["minio-init"]
    script = init["entrypoint"][-1]
    assert init["depends_on"] == {"minio": {"condition": "service_healthy"}}
    assert 'mc mb --ignore-existing "local/${BUCKET}"' in script
    assert 'mc anonymous set none "local/${BUCKET}"' in script
    assert (
        'mc admin user add local "${SHOPREC_ARTIFACT_STORE_KEY_ID}" "${SHOPREC_ARTIFACT_STORE_SECRET}"'
        in script
    )
    assert "arn:aws:s3:::'\"${BUCKET}\"'/*" in script  # the policy names the bucket, nothing wider
    assert '"Resource":["*"]' not in script


@pytest.mark.parametrize("service", [*AIRFLOW_SERVICES, "feast"])
def test_tasks_start_only_after_the_bucket_exists(compose: dict[str, Any], service: str) -> None:
    depends = compose["services"][service]["depends_on"]
    assert depends["minio-init"] == {"condition": "service_completed_successfully"}
