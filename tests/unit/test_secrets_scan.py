"""No secret is committed: every file git tracks (or would add) is scanned for credentials.

The scan looks for private keys, well-known token formats, credentials inside URLs and secret-named
assignments with a literal value.  Values that come from the environment (``${VAR}``, ``$VAR``,
``os.environ``), empty values and obvious placeholders are fine.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# Third-party reference data whose text is not ours to scan (it contains words like "password").
EXEMPT = {"tests/data/compose-spec.json", "constraints.txt"}

PATTERNS: dict[str, re.Pattern[str]] = {
    "private key": re.compile(r"-----BEGIN (?:[A-Z]+ )?PRIVATE KEY-----"),
    "AWS access key id": re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"),
    "GitHub token": re.compile(r"\bgh[pousr]_[A-Za-z0-9]{36,}\b"),
    "Slack token": re.compile(r"\bxox[abprs]-[A-Za-z0-9-]{10,}"),
    "OpenAI/Anthropic-style key": re.compile(r"\bsk-(?:ant-)?[A-Za-z0-9_-]{32,}"),
    "Hugging Face token": re.compile(r"\bhf_[A-Za-z0-9]{30,}\b"),
    "credentials in a URL": re.compile(
        r"\b[a-z][a-z0-9+.-]*://[^\s:/@'\"${}]+:(?P<value>[^\s@/'\"{}]+)@", re.IGNORECASE
    ),
    "secret assignment": re.compile(
        r"""(?ix)
        \b[A-Z0-9_]*(?:PASSWORD|PASSWD|SECRET|SECRET_KEY|API_KEY|TOKEN|FERNET_KEY|PRIVATE_KEY)\b
        ["']?\s*(?::|=|:=)\s*
        (?P<quote>["']?)(?P<value>[^\s"'#,(){}]{8,}|\{[^\s"']*)"""
    ),
}

# A value that is really a reference, a type, or a placeholder, not a secret.
_NOT_A_SECRET = re.compile(
    r"""(?ix)^(
        \$.*                      # ${VAR}, $VAR, $$VAR: read from the environment
      | \{.*                      # f-string / format / template placeholder
      | <[^>]*>                   # <password>
      | \*+ | x+ | \.\.\.         # masked / elided
      | (?:os\.)?environ.* | getenv.* | settings\..* | self\..* | conf\..* | secrets\..*
      | SecretStr.* | str | None | Optional.* | Field.* | bool | int | true | false
      | (?:changeme|placeholder|example|redacted|dummy|test-[a-z_-]+|your[-_].*)
    )$"""
)
# In Python an unquoted right-hand side such as ``conn.password`` or ``re.compile`` is code, not a value.
_PYTHON_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*$")


def _looks_generated(value: str) -> bool:
    """A credential-like literal: 12+ characters mixing letters and digits, or 20+ of anything.

    Short words such as a test fixture's ``"from-conn"`` are not reported by the assignment rule; key,
    token and URL patterns above apply whatever the length.
    """
    mixed = any(c.isdigit() for c in value) and any(c.isalpha() for c in value)
    return (len(value) >= 12 and mixed) or len(value) >= 20


def _tracked_files() -> list[str]:
    result = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    )
    return [name for name in result.stdout.decode().split("\0") if name and name not in EXEMPT]


def find_secrets(text: str, *, python: bool = False) -> list[tuple[int, str]]:
    """(line number, pattern name) for each likely secret in ``text`` (``python``: a .py file)."""
    hits: list[tuple[int, str]] = []
    for number, line in enumerate(text.splitlines(), start=1):
        for name, pattern in PATTERNS.items():
            for match in pattern.finditer(line):
                value = match.groupdict().get("value")
                if value is not None and _NOT_A_SECRET.match(value):
                    continue
                if name == "secret assignment" and not _looks_generated(value or ""):
                    continue
                unquoted = value is not None and not match.groupdict().get("quote")
                if python and unquoted and _PYTHON_NAME.match(value or ""):
                    continue
                hits.append((number, name))
    return hits


def test_repository_contains_no_secret() -> None:
    findings = []
    for name in _tracked_files():
        path = ROOT / name
        if not path.is_file():
            continue
        data = path.read_bytes()
        if b"\0" in data[:4096]:
            continue
        text = data.decode(errors="replace")
        hits = find_secrets(text, python=name.endswith(".py"))
        findings += [f"{name}:{line}: {kind}" for line, kind in hits]
    assert findings == []


def test_no_env_file_is_tracked() -> None:
    env_files = [name for name in _tracked_files() if re.search(r"(^|/)\.env(\.[^/]*)?$", name)]
    assert all(name.endswith(".env.example") for name in env_files), env_files


@pytest.mark.parametrize(
    ("line", "kind"),
    [
        # Built by concatenation so that this file itself scans clean.
        ("-----BEGIN RSA " + "PRIVATE KEY-----", "private key"),
        ("aws_key = AKIA" + "ABCDEFGHIJKLMNOP", "AWS access key id"),
        ("url: postgresql://shoprec:" + "hunter2hunter2@db:5432/x", "credentials in a URL"),
        ("POSTGRES_PASSWORD=" + "s3cr3t-value-here", "secret assignment"),
        ('AIRFLOW__API_AUTH__JWT_SECRET: "' + '9f8e7d6c5b4a39281706"', "secret assignment"),
    ],
)
def test_scanner_flags_a_planted_secret(line: str, kind: str) -> None:
    assert (1, kind) in find_secrets(line)


def test_scanner_flags_a_quoted_literal_in_python() -> None:
    assert find_secrets('api_token = "' + 'a1b2c3d4e5f6g7h8"', python=True) == [(1, "secret assignment")]


@pytest.mark.parametrize(
    "line",
    [
        "POSTGRES_PASSWORD=",
        "POSTGRES_PASSWORD: ${POSTGRES_PASSWORD:?set it}",
        "url: postgresql+psycopg2://shoprec:${POSTGRES_PASSWORD}@postgres:5432/airflow",
        "url: postgresql+psycopg2://postgres@127.0.0.1:5432/shoprec",
        'export AIRFLOW__API_AUTH__JWT_SECRET="$jwt_secret"',
        "pseudonym_key: SecretStr | None = Field(",
        '"AIRFLOW_CONN_KEY", \'{"conn_type": "generic", "password": "from-conn"}\'',
    ],
)
def test_scanner_accepts_values_read_from_the_environment(line: str) -> None:
    assert find_secrets(line) == []


@pytest.mark.parametrize(
    "line",
    [
        'secret = conn.password or conn.extra_dejson.get("key")',
        'parts.append(f"password={parsed.password}")',
        'body = {"username": user, "password": password}',
    ],
)
def test_scanner_accepts_python_code_on_the_right_hand_side(line: str) -> None:
    assert find_secrets(line, python=True) == []
