"""The main job (`coe up`) and the Ray-CLI route (`coe serve-config`)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import yaml
from ray.serve.schema import ServeDeploySchema

from cluster.cli import main as coe_main
from tests.conftest import CONFIGS
from tests.serving_rig import free_port

BIN = Path(sys.executable).parent
OPEN_ENV = {k: v for k, v in os.environ.items() if k != "COE_API_KEY"}  # the local demo: no key


def _one_node_tiny(tmp_path: Path) -> tuple[Path, int]:
    data = yaml.safe_load((CONFIGS / "tiny.yaml").read_text())
    http_port = free_port()
    data.update(name="uptest", serve={"http_port": http_port, "grpc_port": free_port()})
    data["topology"].update(nodes=1, sockets_per_node=2)
    path = tmp_path / "up.yaml"
    path.write_text(yaml.safe_dump(data))
    return path, http_port


@pytest.mark.integration
def test_coe_up_serves_prints_examples_and_shuts_down(tmp_path, tiny_zoo, router_artifact):
    config, http_port = _one_node_tiny(tmp_path)
    done = subprocess.run(
        [str(BIN / "coe"), "up", "--config", str(config), "--exit-after-ready"],
        capture_output=True,
        text=True,
        timeout=600,
        env=OPEN_ENV,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert f"CoE Serve is up at http://127.0.0.1:{http_port}" in done.stdout
    assert "API keys: OFF" in done.stdout and "set COE_API_KEY" in done.stdout  # says it is open
    assert "curl http://127.0.0.1:" in done.stdout and "from openai import OpenAI" in done.stdout
    with pytest.raises(httpx.HTTPError):  # shut down cleanly: nothing listens any more
        httpx.get(f"http://127.0.0.1:{http_port}/healthz", timeout=2)


def test_coe_up_refuses_a_multi_node_config_locally(tiny_zoo, router_artifact):
    done = subprocess.run(
        [str(BIN / "coe"), "up", "--config", str(CONFIGS / "tiny.yaml")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode != 0 and "cluster.deploy" in done.stdout + done.stderr


def test_coe_up_refuses_an_empty_api_key_variable_before_starting_ray(tmp_path, tiny_zoo, router_artifact):
    config, _ = _one_node_tiny(tmp_path)
    done = subprocess.run(
        [str(BIN / "coe"), "up", "--config", str(config), "--exit-after-ready"],
        capture_output=True,
        text=True,
        timeout=300,
        env={**OPEN_ENV, "COE_API_KEY": " "},  # a Secret that did not arrive: never serve open by accident
    )
    assert done.returncode != 0 and "COE_API_KEY is set but holds no key" in done.stderr
    assert "starting local Ray" not in done.stdout


def test_serve_config_parses_with_rays_schema(tmp_path, capsys, tiny_zoo):
    out = tmp_path / "serve.yaml"
    assert coe_main(["serve-config", "--config", str(CONFIGS / "demo.yaml"), "--out", str(out)]) == 0
    schema = ServeDeploySchema.model_validate(yaml.safe_load(out.read_text()))
    app = schema.applications[0]
    assert app.import_path == "deployments.app:build_app"
    assert Path(app.args["config"]).resolve() == (CONFIGS / "demo.yaml").resolve()
    assert schema.grpc_options.port == 9000 and schema.grpc_options.grpc_servicer_functions
