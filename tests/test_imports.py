"""Start-up cost: commands that read TUF metadata over HTTP do not import boto3 (imagectl/_imports.py)."""

from __future__ import annotations

import subprocess
import sys

PROBE = """
import sys
import imagectl.pull, imagectl.catalogue.client, imagectl.catalogue.state
print("boto3" in sys.modules, "botocore" in sys.modules)
from securesystemslib.signer import AWSSigner, Signer
print(Signer.__name__, AWSSigner.__name__)
import boto3, botocore.exceptions
print(boto3.session.Session().client("s3", region_name="us-east-1").meta.service_model.service_name)
"""


def test_reading_metadata_does_not_import_boto3_and_boto3_still_imports_after() -> None:
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.split() == ["False", "False", "Signer", "AWSSigner", "s3"], out.stdout + out.stderr


def test_s3_stores_import_boto3_as_before() -> None:
    probe = "import imagectl.store.s3 as s, sys; print('boto3' in sys.modules, s.S3Store.__name__)"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.split() == ["True", "S3Store"], out.stdout + out.stderr
