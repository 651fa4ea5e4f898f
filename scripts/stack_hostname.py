"""Airflow ``[core] hostname_callable`` for several Celery workers on one host.

Airflow records the task instance's ``hostname`` from this callable.  Workers in containers or on
their own machines have distinct host names already; the native stack (scripts/stack.sh) runs two
workers on one host, so each gets ``SHOPREC_WORKER_NAME`` and reports ``<fqdn>-<worker name>``.
Standard library only: every Airflow process of the stack imports it through PYTHONPATH.
"""

from __future__ import annotations

import os
import socket


def worker_hostname() -> str:
    """``<fqdn>-<SHOPREC_WORKER_NAME>``, or the plain FQDN outside a named worker."""
    fqdn = socket.getfqdn()
    name = os.environ.get("SHOPREC_WORKER_NAME", "")
    return f"{fqdn}-{name}" if name else fqdn
