"""Configuration is one object: every ``SHOPREC_*`` variable is read by :mod:`tasks.config` only, and
the DP-SGD and DP popularity settings reach training, publishing and the benchmarks from ``Settings``."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from helpers_settings import only_shoprec_env

from tasks.config import Settings, one_setting

REPO_ROOT = Path(__file__).resolve().parents[2]
SCANNED = ("tasks", "dags", "feature_repo", "benchmarks")


def _is_os_environ(node: ast.AST) -> bool:
    return (
        isinstance(node, ast.Attribute)
        and node.attr == "environ"
        and isinstance(node.value, ast.Name)
        and node.value.id == "os"
    ) or (isinstance(node, ast.Name) and node.id == "environ")


def _shoprec_literal(node: ast.AST | None) -> bool:
    return (
        isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.startswith("SHOPREC_")
    )


def _reads_shoprec(node: ast.AST) -> bool:
    if isinstance(node, ast.Call) and node.args and _shoprec_literal(node.args[0]):
        func = node.func
        if isinstance(func, ast.Name):
            return func.id == "getenv"
        return isinstance(func, ast.Attribute) and (
            (func.attr in {"get", "setdefault", "pop"} and _is_os_environ(func.value))
            or (func.attr == "getenv" and isinstance(func.value, ast.Name) and func.value.id == "os")
        )
    if isinstance(node, ast.Subscript):
        return isinstance(node.ctx, ast.Load) and _is_os_environ(node.value) and _shoprec_literal(node.slice)
    if isinstance(node, ast.Compare):
        return (
            _shoprec_literal(node.left)
            and any(isinstance(op, ast.In | ast.NotIn) for op in node.ops)
            and any(_is_os_environ(c) for c in node.comparators)
        )
    return False


def environment_reads(tree: ast.AST) -> list[int]:
    """Lines reading a ``SHOPREC_*`` variable: ``os.environ.get/[]/in``, ``os.getenv``, ``environ.get``."""
    return sorted(node.lineno for node in ast.walk(tree) if _reads_shoprec(node))


def test_the_scanner_finds_every_kind_of_read() -> None:
    source = (
        "import os\nfrom os import environ, getenv\n"
        "a = os.environ.get('SHOPREC_A')\nb = os.getenv('SHOPREC_B', '1')\nc = os.environ['SHOPREC_C']\n"
        "d = 'SHOPREC_D' in os.environ\ne = environ.get('SHOPREC_E')\nf = getenv('SHOPREC_F')\n"
        "os.environ['SHOPREC_G'] = '1'\nh = os.environ.get('HF_HUB_OFFLINE')\n"
    )
    assert environment_reads(ast.parse(source)) == [3, 4, 5, 6, 7, 8]


def test_no_shoprec_variable_is_read_outside_tasks_config() -> None:
    found = []
    for folder in SCANNED:
        for path in sorted((REPO_ROOT / folder).rglob("*.py")):
            if path == REPO_ROOT / "tasks" / "config.py":
                continue
            for line in environment_reads(ast.parse(path.read_text(), filename=str(path))):
                found.append(f"{path.relative_to(REPO_ROOT)}:{line}")
    assert found == [], f"SHOPREC_* read outside tasks/config.py (add a Settings field): {found}"


def test_benchmarks_import_no_training_or_publishing_constants() -> None:
    found = []
    for path in sorted((REPO_ROOT / "benchmarks").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.ImportFrom) and node.module in {"tasks.training", "tasks.publishing"}:
                found += [f"{path.name}: {alias.name}" for alias in node.names if alias.name.isupper()]
    assert found == [], f"benchmarks copy the pipeline's settings from module constants: {found}"


def test_default_home_does_not_depend_on_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    only_shoprec_env(monkeypatch, {})
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    homes = set()
    for folder in (tmp_path / "a", tmp_path / "b"):
        folder.mkdir()
        monkeypatch.chdir(folder)
        homes.add(Settings().home)
    assert homes == {(tmp_path / "user" / ".shoprec").resolve()}


def test_training_and_popularity_settings_come_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tasks.publishing import country_popularity_release
    from tasks.training import dp_popularity, train_config

    only_shoprec_env(monkeypatch, {"SHOPREC_HOME": str(tmp_path)})
    defaults = Settings()
    config, pop, country = (
        train_config(defaults, n_users=4_000),
        dp_popularity(defaults),
        country_popularity_release(defaults),
    )
    # the issue-17 reference design: Poisson rate 0.25 (1,000 expected users of 4,000), 160 steps
    assert (config.batch_size, config.lr, config.n_negatives, config.max_grad_norm, config.cap_k) == (
        1_000,
        5e-3,
        100,
        1.0,
        10,
    )
    assert (config.sample_rate(4_000), config.steps(4_000)) == (0.25, 160)
    assert (config.seed, config.noise_seed, config.private) == (7, None, True)
    assert (pop.noise_multiplier, pop.cap_per_user, pop.days, pop.by_country) == (4.0, 50, 14, False)
    assert (country.noise_multiplier, country.cap_per_user, country.days, country.event_types) == (
        4.0,
        20,
        30,
        ("purchase",),
    )
    assert country.by_country
    assert (defaults.train_retry_delay_s, defaults.trainer_image) == (60, "shoprec-trainer:latest")

    for key, value in {
        "SHOPREC_TRAIN_SAMPLE_RATE": "0.1",
        "SHOPREC_TRAIN_STEPS": "50",
        "SHOPREC_TRAIN_LR": "0.003",
        "SHOPREC_TRAIN_NEGATIVES": "16",
        "SHOPREC_TRAIN_CLIP_NORM": "0.5",
        "SHOPREC_TRAIN_CAP_K": "10",
        "SHOPREC_POPULARITY_NOISE_MULTIPLIER": "6",
        "SHOPREC_POPULARITY_DAYS": "30",
        "SHOPREC_COUNTRY_POPULARITY_CAP_PER_USER": "5",
        "SHOPREC_TRAIN_RETRY_DELAY_S": "3",
    }.items():
        monkeypatch.setenv(key, value)
    changed = Settings()
    config, pop = train_config(changed, n_users=4_000), dp_popularity(changed)
    assert (config.sample_rate(4_000), config.steps(4_000)) == (0.1, 50)
    assert (config.batch_size, config.lr, config.n_negatives, config.max_grad_norm, config.cap_k) == (
        400,
        0.003,
        16,
        0.5,
        10,
    )
    assert (pop.noise_multiplier, pop.cap_per_user, pop.days) == (6.0, 50, 30)
    assert country_popularity_release(changed).cap_per_user == 5
    assert changed.train_retry_delay_s == 3


def test_training_retry_delay_follows_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tasks.assets import training_retry_delay

    only_shoprec_env(monkeypatch, {"SHOPREC_HOME": str(tmp_path), "SHOPREC_TRAIN_RETRY_DELAY_S": "3"})
    assert training_retry_delay().total_seconds() == 3
    assert training_retry_delay(Settings(train_retry_delay_s=90)).total_seconds() == 90


def test_one_setting_reads_one_field_as_settings_would_and_nothing_else(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """For DAG files: one field from its SHOPREC_* variable (else its default), with the field's type
    and constraints; an invalid value of another field is not read, so it breaks nothing here."""

    only_shoprec_env(monkeypatch, {"SHOPREC_HOME": str(tmp_path), "SHOPREC_TRAIN_STEPS": "many"})
    monkeypatch.chdir(tmp_path)  # no .env here
    with pytest.raises(ValueError, match="train_steps"):
        Settings()
    assert one_setting("train_retry_delay_s") == 60
    assert one_setting("trainer_image") == "shoprec-trainer:latest"
    monkeypatch.setenv("SHOPREC_TRAIN_RETRY_DELAY_S", "7")
    assert one_setting("train_retry_delay_s") == 7
    (tmp_path / ".env").write_text("SHOPREC_TRAINER_IMAGE=registry.example/trainer:3\n")
    assert one_setting("trainer_image") == "registry.example/trainer:3"  # the .env file, as Settings
    for bad in ("-1", "soon"):  # ge=0, int: the field's own validation, one line naming the variable
        monkeypatch.setenv("SHOPREC_TRAIN_RETRY_DELAY_S", bad)
        with pytest.raises(ValueError, match=r"^SHOPREC_TRAIN_RETRY_DELAY_S=.*: ") as refused:
            one_setting("train_retry_delay_s")
        assert "\n" not in str(refused.value)
    with pytest.raises(KeyError, match="no_such_field"):
        one_setting("no_such_field")


@pytest.mark.parametrize(("value", "expected"), [("1", True), ("yes", True), ("0", False), ("maybe", False)])
def test_verbose_flag_is_read_by_config(value: str, expected: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    from tasks.config import verbose_requested

    only_shoprec_env(monkeypatch, {"SHOPREC_VERBOSE": value, "SHOPREC_SEED": "not a number"})
    assert verbose_requested() is expected
