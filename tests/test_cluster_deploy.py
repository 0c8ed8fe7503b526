"""`ray job submit ... python -m cluster.deploy` onto a real `ray start` head plus a worker node.

The head and the worker are separate `ray start --block` processes (two nodes on this machine),
stopped by signalling them, so other Ray clusters on the machine (other tests) are untouched.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import pytest
import yaml

from cluster.paths import REPO_ROOT, zoo_dir
from tests.conftest import CONFIGS
from tests.serving_rig import free_port

pytestmark = pytest.mark.integration
BIN = Path(sys.executable).parent


def _env(tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{BIN}:{env['PATH']}"
    env["RAY_AUTH_MODE"] = "token"  # RAY-NOTES: 2.60 heads use token auth; job submit needs this
    # Ray gives its dashboard 60 s to start, then fails `ray start --head`; a fresh CI-like clone,
    # both cores busy with the other worker's module, took longer (head.log: "Failed to start the
    # dashboard"). The job API lives in the dashboard, so it must start, however slowly.
    env["RAY_DASHBOARD_STARTUP_TIMEOUT_S"] = "240"
    env.pop("RAY_ADDRESS", None)
    return env


@pytest.fixture()
def ray_head_and_worker(tmp_path, tiny_zoo):
    env = _env(tmp_path)
    gcs_port, dash_port = free_port(), free_port()
    temp_dir = Path(tempfile.mkdtemp(prefix="coe-ray-", dir="/tmp"))  # AF_UNIX paths must stay < 108 bytes
    head = subprocess.Popen(
        [
            str(BIN / "ray"),
            "start",
            "--head",
            "--block",
            f"--port={gcs_port}",
            "--num-cpus=2",
            f"--dashboard-port={dash_port}",
            # The job agent's HTTP port; Ray's default (52365) is taken by any other local Ray on
            # this machine (pytest-xdist runs another module beside this one), and a head whose
            # agent cannot bind answers every submit "No available agent".
            f"--dashboard-agent-listen-port={free_port()}",
            "--dashboard-host=127.0.0.1",
            "--include-dashboard=true",
            '--resources={"coe_socket": 2}',
            "--object-store-memory=150000000",
            f"--temp-dir={temp_dir}",
        ],
        env=env,
        stdout=(tmp_path / "head.log").open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    procs = [head]
    try:
        dashboard = f"http://127.0.0.1:{dash_port}"
        _wait_http(f"{dashboard}/api/version", timeout_s=300)
        worker = subprocess.Popen(
            [
                str(BIN / "ray"),
                "start",
                "--block",
                f"--address=127.0.0.1:{gcs_port}",
                f"--dashboard-agent-listen-port={free_port()}",
                "--num-cpus=2",
                '--resources={"coe_socket": 2}',
                "--object-store-memory=150000000",
            ],
            env=env,
            stdout=(tmp_path / "worker.log").open("w"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        procs.append(worker)
        _wait_for_nodes(
            f"127.0.0.1:{gcs_port}", 2, env, logs=[tmp_path / "head.log", tmp_path / "worker.log"]
        )
        yield {"dashboard": dashboard, "gcs": f"127.0.0.1:{gcs_port}", "env": env}
    finally:
        for proc in reversed(procs):
            os.killpg(proc.pid, signal.SIGTERM)
        for proc in reversed(procs):
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        shutil.rmtree(temp_dir, ignore_errors=True)


def _wait_for_nodes(
    address: str, count: int, env: dict[str, str], logs: list[Path], timeout_s: float = 300
) -> None:
    """Until `count` nodes are alive, asked from a fresh driver process (as `ray job submit`'s
    entrypoint would see them). A probe that fails outright (its driver could not attach while the
    worker's raylet was still registering on a loaded box: CI showed exit 1 with no message) or
    hangs past its own deadline (a fresh CI-like clone, both cores busy: 175 s) is run again until
    the deadline; the failure carries the last probe's stderr and the tails of the nodes' logs."""
    deadline = time.monotonic() + timeout_s
    while True:
        wait_s = min(max(1.0, deadline - time.monotonic()), 60.0)  # one probe's own wait
        probe = (
            "import ray, time\n"
            f"ray.init(address='{address}', log_to_driver=False)\n"
            f"deadline = time.monotonic() + {wait_s}\n"
            f"while sum(n['Alive'] for n in ray.nodes()) < {count} and time.monotonic() < deadline:\n"
            "    time.sleep(0.5)\n"
            f"assert sum(n['Alive'] for n in ray.nodes()) >= {count}\n"
        )
        try:
            done = subprocess.run(
                [sys.executable, "-c", probe],
                env=env,
                timeout=wait_s + 60,
                capture_output=True,
                text=True,
            )
            if done.returncode == 0:
                return
            stderr = done.stderr
        except subprocess.TimeoutExpired as err:
            stderr = f"the probe hung: {err}"
        if time.monotonic() > deadline:
            tails = "\n".join(f"--- {log.name}\n{log.read_text()[-1500:]}" for log in logs if log.exists())
            raise AssertionError(f"{count} Ray nodes not alive at {address}: {stderr[-3000:]}\n{tails}")
        time.sleep(2)


def _wait_http(url: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            httpx.get(url, timeout=2)
            return
        except httpx.HTTPError:
            time.sleep(0.5)
    raise TimeoutError(url)


def _job_config(tmp_path: Path, **topology) -> tuple[Path, int]:
    data = yaml.safe_load((CONFIGS / "tiny.yaml").read_text())
    http_port = free_port()
    data["name"] = "jobsubmit"
    data["store_root"] = str(zoo_dir())  # absolute: the job's working dir does not carry the zoo
    data["serve"] = {"http_port": http_port, "grpc_port": free_port()}
    data["topology"].update(topology)
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump(data))
    return path, http_port


def _submit(head: dict, config: Path) -> subprocess.CompletedProcess:
    command = [
        str(BIN / "ray"),
        "job",
        "submit",
        f"--address={head['dashboard']}",
        "--working-dir",
        str(REPO_ROOT),
        "--",
        "python",
        "-m",
        "cluster.deploy",
        "--config",
        str(config),
        "--timeout-s",
        "300",
    ]
    deadline = time.monotonic() + 120
    while True:
        job = subprocess.run(command, env=head["env"], capture_output=True, text=True, timeout=600)
        # A fresh head's job agent takes a moment to come up; that answer is a retryable 500.
        if "No available agent" not in job.stderr or time.monotonic() > deadline:
            return job
        time.sleep(2)


def _job_output(job: subprocess.CompletedProcess) -> str:
    """The job's own lines (Ray's upload chatter filtered out), for a readable failure."""
    lines = (job.stdout + job.stderr).splitlines()
    own = [line for line in lines if "packaging.py" not in line and "working_dir.py" not in line]
    return "\n".join(own)[-8000:]


def test_ray_job_submit_deploys_and_serves_a_chat_request(tmp_path, ray_head_and_worker):
    config, http_port = _job_config(tmp_path)
    job = _submit(ray_head_and_worker, config)
    assert job.returncode == 0, _job_output(job)
    assert "RUNNING on 2 node(s) x 2 sockets" in job.stdout
    response = httpx.post(
        f"http://127.0.0.1:{http_port}/v1/chat/completions",
        timeout=120,
        json={
            "model": "coe",
            "messages": [{"role": "user", "content": "Compute 17 * 23 step by step."}],
            "max_tokens": 3,
        },
    )
    assert response.status_code == 200, response.text
    assert response.json()["coe"]["expert"] == "tiny-01"
    nodes = httpx.get(f"http://127.0.0.1:{http_port}/v1/memtier", timeout=30).json()["nodes"]
    # Real Ray node ids (56 hex chars), two nodes with two sockets each.
    assert len(nodes) == 2 and all(len(n["node_id"]) == 56 and len(n["sockets"]) == 2 for n in nodes)

    # A topology the cluster cannot host fails fast with a message naming what is missing.
    too_big, _ = _job_config(tmp_path, nodes=3)
    refused = _submit(ray_head_and_worker, too_big)
    assert refused.returncode != 0
    assert "needs 3 node(s) with 2 'coe_socket' resources each" in refused.stdout + refused.stderr


def test_the_demo_router_is_kept_beside_the_store_and_named_for_the_ingress(tmp_path, tiny_config):
    """Under `ray job submit` the working dir carries no zoo: the deploy names the demo router by its
    path beside the STORE (trained there if missing), so no ingress trains one on a first request."""
    from cluster.deploy import with_router_beside_store
    from cluster.paths import router_dir
    from router.routing import ensure_default_artifact

    router = tiny_config.router.model_copy(update={"artifact": "/x"})
    named = tiny_config.model_copy(update={"router": router})
    assert with_router_beside_store(named) is named  # an artifact the config names is left alone

    ensure_default_artifact(router_dir())  # the suite's demo router (trained once per machine)
    shutil.copytree(router_dir(), tmp_path / "router")
    trained_at = (tmp_path / "router" / "router.json").stat().st_mtime_ns
    store = tiny_config.model_copy(update={"store_root": str(tmp_path)})
    deployed = with_router_beside_store(store)
    assert deployed.router.artifact == str(tmp_path / "router")
    assert (tmp_path / "router" / "router.json").stat().st_mtime_ns == trained_at  # current: not retrained
