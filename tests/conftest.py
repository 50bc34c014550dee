"""Shared test set-up. Fixtures for real parts live in tests/fixtures/, one module each."""

import os

pytest_plugins = [
    "fixtures.kube",
    "fixtures.modal",
    "fixtures.realparts",
]

# In CI a missing real part is a failure, never a skip.
IN_CI = os.environ.get("CI", "").lower() == "true"
