"""The real demo zoo (SmolLM2 experts) behind the app: routing to a specialist, and a socket
replica killed mid-request being retried on another socket (invariant 7)."""

from __future__ import annotations

import concurrent.futures
import json
import time

import httpx
import pytest
import ray
import yaml

from cluster.config import config_from_dict
from tests.conftest import CONFIGS
from tests.serving_rig import ServingRig
from tests.waiting import wait_for

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def rig(demo_zoo, router_artifact):
    data = yaml.safe_load((CONFIGS / "demo.yaml").read_text())
    data["name"] = "demo-test"
    data["topology"].update(nodes=1, sockets_per_node=2, ddr_per_node="1GiB", cpus_per_socket=1)
    keep = {"math", "code", "generalist"}
    data["experts"] = [e for e in data["experts"] if e["id"] in keep]
    data["router"]["category_map"] = {
        c: ("math" if c == "math" else "code" if c == "code" else "generalist")
        for c in ["code", "math", "medicine", "law", "finance", "science", "writing", "general"]
    }
    rig = ServingRig(config_from_dict(data))
    yield rig
    rig.close()


def _chat(rig, model: str, content: str, max_tokens: int) -> httpx.Response:
    return httpx.post(
        f"{rig.base_url}/v1/chat/completions",
        timeout=300,
        json={
            "model": model,
            "messages": [{"role": "user", "content": content}],
            "max_tokens": max_tokens,
            "temperature": 0,
        },
    )


def test_coe_sends_a_math_question_to_the_math_specialist(rig):
    response = _chat(rig, "coe", "What is 12 multiplied by 7? Show the calculation.", 12)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["coe"]["expert"] == "math" and body["coe"]["category"] == "math"
    assert body["choices"][0]["message"]["content"].strip()


def test_a_socket_killed_mid_request_is_retried_on_another(rig):
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pending = pool.submit(_chat, rig, "generalist", "Tell me a long story about a lighthouse keeper.", 40)
        victim = None
        deadline = time.monotonic() + 120
        while victim is None and time.monotonic() < deadline:
            for node in rig.memtier()["nodes"]:
                for socket in node["sockets"]:
                    if socket["leases"] and "generalist" in socket["residents"]:
                        victim = socket["socket_id"]
            time.sleep(0.2)
        assert victim is not None, "the request never reached a socket"
        start = rig.on_socket(victim, "engine_stats")["decode_steps"]

        def decoding() -> bool:  # kill it mid-generation: once its row decodes, long before 40 tokens
            stats = rig.on_socket(victim, "engine_stats")
            return stats["running"] > 0 and stats["decode_steps"] > start

        wait_for(decoding, "the row to start decoding", timeout_s=120)
        replica = ray.get_actor(f"SERVE_REPLICA::coe#ExpertSocket#{victim}", namespace="serve")
        ray.kill(replica, no_restart=True)
        response = pending.result(timeout=600)
    assert response.status_code == 200, response.text
    coe = response.json()["coe"]
    assert coe["retried"] is True and coe["socket"] != victim
    assert response.json()["choices"][0]["message"]["content"].strip()
    # The dead socket is gone from memtier's directory.
    sockets = {s["socket_id"] for n in rig.memtier()["nodes"] for s in n["sockets"]}
    assert victim not in sockets


def test_without_sampling_fields_the_expert_answers_with_its_checkpoint_defaults(rig):
    """SmolLM2's recommended sampling (temperature 0.2, top_p 0.9, from the zoo's
    generation_config.json) applies when a request names none: no rambling about France."""
    answers = []
    for _ in range(3):
        response = httpx.post(
            f"{rig.base_url}/v1/chat/completions",
            timeout=300,
            json={
                "model": "generalist",
                "messages": [{"role": "user", "content": "What is the capital of France?"}],
            },
        )
        assert response.status_code == 200, response.text
        answers.append(response.json()["choices"][0]["message"]["content"])
    assert all("Paris" in answer for answer in answers), answers


def test_streamed_text_equals_the_non_streamed_text_for_the_same_seed(rig):
    body = {
        "model": "generalist",
        "messages": [{"role": "user", "content": "Write one sentence about lighthouses."}],
        "max_tokens": 24,
        "temperature": 0.9,
        "seed": 5,
    }
    whole = httpx.post(f"{rig.base_url}/v1/chat/completions", timeout=300, json=body).json()
    parts = []
    with httpx.stream(
        "POST", f"{rig.base_url}/v1/chat/completions", timeout=300, json={**body, "stream": True}
    ) as response:
        for line in response.iter_lines():
            if line.startswith("data:") and line.strip() != "data: [DONE]":
                for choice in json.loads(line[5:]).get("choices") or []:
                    parts.append((choice.get("delta") or {}).get("content") or "")
    assert "".join(parts) == whole["choices"][0]["message"]["content"] and parts
