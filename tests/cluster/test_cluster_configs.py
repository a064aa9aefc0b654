"""The cluster files parse, carry what KubeRay, the cluster launcher and cron need, and agree with pyproject.

A version bumped in one place and not the others (Ray in pyproject but not in
the manifests, the image tag but not the package) would give clusters whose
driver and workers run different code; these tests catch that in CI.
"""

from __future__ import annotations

import re
import shlex
import tomllib
from pathlib import Path

import pytest
import yaml

import mmr5_batch
from mmr5_batch.cli.arguments import config_from_args, parse_args
from mmr5_batch.config import load_config

REPO = Path(__file__).resolve().parents[2]
CLUSTER = REPO / "cluster"
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())


def pinned(requirement_prefix: str, requirements: list[str]) -> str:
    [spec] = [item for item in requirements if item.startswith(requirement_prefix)]
    return spec.split("==", 1)[1]


RAY = pinned("ray[", PYPROJECT["project"]["dependencies"])
VLLM = pinned("vllm", PYPROJECT["project"]["optional-dependencies"]["vllm"])
VERSION = PYPROJECT["project"]["version"]


def yaml_documents(path: Path) -> list[dict]:
    return [document for document in yaml.safe_load_all(path.read_text()) if document]


def manifest(path: str) -> dict:
    [document] = yaml_documents(CLUSTER / path)
    return document


def images(tree) -> list[str]:
    """Every `image:` value in a manifest, at any depth."""
    if isinstance(tree, dict):
        return [value for key, value in tree.items() if key == "image" and isinstance(value, str)] + [
            image for value in tree.values() for image in images(value)
        ]
    if isinstance(tree, list):
        return [image for value in tree for image in images(value)]
    return []


def dockerfile_args() -> dict[str, str]:
    return dict(re.findall(r"^ARG (\w+)=(\S+)$", (CLUSTER / "Dockerfile").read_text(), flags=re.M))


def test_the_package_version_is_pyprojects():
    assert mmr5_batch.__version__ == VERSION


def test_the_images_pin_what_pyproject_and_the_makefile_pin():
    args = dockerfile_args()
    assert args["RAY_VERSION"] == RAY
    assert args["VLLM_VERSION"] == VLLM
    torch = re.search(r"^TORCH_SPEC \?= torch==(\S+)$", (REPO / "Makefile").read_text(), flags=re.M).group(1)
    assert args["TORCH_VERSION"] == torch
    python = re.search(r">=3\.(\d+),<3\.(\d+)", PYPROJECT["project"]["requires-python"])
    assert args["PYTHON_TAG"] == f"py3{python.group(1)}" and int(python.group(2)) == int(python.group(1)) + 1
    targets = re.findall(r"^FROM \S+ AS (\w+)$", (CLUSTER / "Dockerfile").read_text(), flags=re.M)
    assert {"cpu", "gpu", "scheduler"} <= set(targets)
    # Everything the manifests run from the image is copied into it.
    copied = re.findall(r"^COPY (?!--)(.+) /app/", (CLUSTER / "Dockerfile").read_text(), flags=re.M)
    assert {"mmr5_batch", "jobs", "cluster"} <= {name for line in copied for name in line.split()}


@pytest.mark.parametrize("path", ["kuberay/rayjob.yaml", "kuberay/raycluster.yaml", "launcher/aws.yaml", "schedule/cronjob.yaml"])
def test_every_image_is_this_versions_build(path):
    found = {image for document in yaml_documents(CLUSTER / path) for image in images(document)}
    launcher = yaml_documents(CLUSTER / path)[0]
    if path.startswith("launcher"):
        found |= {launcher["docker"]["image"]} | {node["docker"]["worker_image"] for node in launcher["available_node_types"].values() if "docker" in node}
    assert found, "no image named"
    for image in found:
        assert re.fullmatch(rf"[\w./-]+/mmr5-batch:{re.escape(VERSION)}-(cpu|gpu|scheduler)", image), image


def ray_cluster_specs() -> dict[str, dict]:
    return {"rayjob": manifest("kuberay/rayjob.yaml")["spec"]["rayClusterSpec"], "raycluster": manifest("kuberay/raycluster.yaml")["spec"]}


def worker_groups(spec: dict) -> dict[str, dict]:
    return {group["groupName"]: group for group in spec["workerGroupSpecs"]}


def container(group: dict) -> dict:
    [only] = group["template"]["spec"]["containers"]
    return only


@pytest.mark.parametrize("name", ["rayjob", "raycluster"])
def test_kuberay_clusters_have_a_cpu_head_an_autoscaled_gpu_group_and_a_cpu_group(name):
    spec = ray_cluster_specs()[name]
    assert spec["rayVersion"] == RAY
    assert spec["enableInTreeAutoscaling"] is True
    head = spec["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0"  # no tasks on the head
    assert "nvidia.com/gpu" not in container(head)["resources"]["limits"]
    assert container(head)["image"].endswith("-cpu")
    groups = worker_groups(spec)
    gpu_groups = [group for group in groups.values() if "nvidia.com/gpu" in container(group)["resources"]["limits"]]
    cpu_groups = [group for group in groups.values() if "nvidia.com/gpu" not in container(group)["resources"]["limits"]]
    assert len(gpu_groups) == 1 and cpu_groups
    for group in groups.values():
        assert 0 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"], group["groupName"]
    [gpu] = gpu_groups
    assert container(gpu)["image"].endswith("-gpu") and all(container(group)["image"].endswith("-cpu") for group in cpu_groups)
    # The job's actor pool grows as far as the GPU group can.
    job = load_config(CLUSTER / "job.yaml", {"input": "s3://in/", "output": "s3://out/"})
    assert job.execution.max_actors == gpu["maxReplicas"]
    if gpu["minReplicas"] == 0:
        assert job.execution.gpu_wait_seconds > 0, "a GPU group that scales to zero needs the job to wait for it"


def test_the_rayjob_is_resubmitted_and_cleans_up_after_itself():
    rayjob = manifest("kuberay/rayjob.yaml")
    spec = rayjob["spec"]
    assert rayjob["kind"] == "RayJob" and rayjob["apiVersion"] == "ray.io/v1"
    assert spec["shutdownAfterJobFinishes"] is True
    assert spec["backoffLimit"] >= 1
    assert yaml.safe_load(spec["runtimeEnvYAML"])["env_vars"]
    # The submitter and the head both see the job's ConfigMap, whichever expands the entrypoint.
    head_env = container(spec["rayClusterSpec"]["headGroupSpec"])["envFrom"]
    submitter_env = spec["submitterPodTemplate"]["spec"]["containers"][0]["envFrom"]
    assert {"configMapRef": {"name": "mmr5-job"}} in head_env and {"configMapRef": {"name": "mmr5-job"}} in submitter_env


def test_the_rayjob_entrypoint_is_a_valid_rerank_command_on_files_in_the_image():
    entrypoint = manifest("kuberay/rayjob.yaml")["spec"]["entrypoint"]
    values = {"MMR5_INPUT": "s3://bucket/candidates/", "MMR5_OUTPUT": "s3://bucket/reranked/", "MMR5_ARGS": "--think-tokens 1024"}
    words = shlex.split(re.sub(r"\$(\w+)", lambda match: values[match.group(1)], entrypoint))
    assert words[:2] == ["python", "/app/jobs/rerank.py"] and (REPO / "jobs" / "rerank.py").is_file()
    args = parse_args(["rerank", *words[2:]])
    assert args.config.startswith("/app/") and (REPO / args.config.removeprefix("/app/")).is_file()
    args.config = str(REPO / args.config.removeprefix("/app/"))
    config = config_from_args(args)
    assert (config.input, config.output, config.model.backend, config.model.think_tokens) == (
        "s3://bucket/candidates/", "s3://bucket/reranked/", "vllm", 1024,
    )  # fmt: skip


def test_the_launcher_config_has_autoscaled_gpu_and_cpu_workers_that_match_the_job():
    launcher = manifest("launcher/aws.yaml")
    for key in ("cluster_name", "provider", "auth", "head_node_type", "available_node_types", "head_start_ray_commands", "worker_start_ray_commands"):
        assert key in launcher, key
    nodes = launcher["available_node_types"]
    assert launcher["head_node_type"] in nodes and nodes[launcher["head_node_type"]]["resources"]["CPU"] == 0
    gpu = [node for node in nodes.values() if node.get("resources", {}).get("GPU")]
    cpu = [name for name, node in nodes.items() if name != launcher["head_node_type"] and not node.get("resources", {}).get("GPU")]
    assert len(gpu) == 1 and cpu
    assert gpu[0]["min_workers"] <= gpu[0]["max_workers"] <= launcher["max_workers"]
    job = load_config(CLUSTER / "job.yaml", {"input": "s3://in/", "output": "s3://out/"})
    assert job.execution.max_actors == gpu[0]["max_workers"]
    assert any("--num-cpus=0" in command for command in launcher["head_start_ray_commands"])
    assert any("--autoscaling-config" in command for command in launcher["head_start_ray_commands"])


def test_the_cronjob_creates_the_rayjob_it_guards_against():
    documents = {document["kind"]: document for document in yaml_documents(CLUSTER / "schedule" / "cronjob.yaml")}
    assert {"ServiceAccount", "Role", "RoleBinding", "CronJob"} <= set(documents)
    cron = documents["CronJob"]["spec"]
    assert cron["concurrencyPolicy"] == "Forbid"
    pod = cron["jobTemplate"]["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == documents["ServiceAccount"]["metadata"]["name"]
    [rule] = documents["Role"]["rules"]
    assert rule["apiGroups"] == ["ray.io"] and rule["resources"] == ["rayjobs"] and {"create", "get", "list"} <= set(rule["verbs"])
    script = container({"template": {"spec": pod}})["args"][0]
    # The guard selects RayJobs by the label the RayJob manifest carries.
    label = manifest("kuberay/rayjob.yaml")["metadata"]["labels"]["app.kubernetes.io/name"]
    assert f"selector=app.kubernetes.io/name={label}" in script
    mount = container({"template": {"spec": pod}})["volumeMounts"][0]["mountPath"]
    assert f"kubectl create -f {mount}/rayjob.yaml" in script
    assert "generateName" in manifest("kuberay/rayjob.yaml")["metadata"]  # every slot creates a new RayJob


# The Secret holding the token of the project's KubeRay clusters (docs/cluster.md, "Token authentication").
AUTH_SECRET = "mmr5-ray-auth"


@pytest.mark.parametrize("name", ["rayjob", "raycluster"])
def test_kuberay_clusters_turn_token_authentication_on_with_the_documented_secret(name):
    spec = ray_cluster_specs()[name]
    assert spec["authOptions"] == {"mode": "token", "secretName": AUTH_SECRET}
    assert f"kubectl create secret generic {AUTH_SECRET} --from-literal=auth_token=" in (CLUSTER / "kuberay" / f"{name}.yaml").read_text()
    assert f"kubectl create secret generic {AUTH_SECRET} --from-literal=auth_token=" in (REPO / "docs" / "cluster.md").read_text()


def test_the_rayjob_submitter_and_the_cronjobs_rayjob_send_the_secrets_token():
    """The CronJob creates the RayJob of the mmr5-rayjob ConfigMap (this file); its submitter runs `ray job submit`
    with the mode and the token of the cluster's Secret."""
    submitter = manifest("kuberay/rayjob.yaml")["spec"]["submitterPodTemplate"]["spec"]["containers"][0]
    env = {item["name"]: item for item in submitter["env"]}
    assert env["RAY_AUTH_MODE"]["value"] == "token"
    assert env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": AUTH_SECRET, "key": "auth_token"}
    cronjob = (CLUSTER / "schedule" / "cronjob.yaml").read_text()
    assert "--from-file=rayjob.yaml=cluster/kuberay/rayjob.yaml" in cronjob and f"kubectl create secret generic {AUTH_SECRET}" in cronjob


def test_the_launcher_starts_every_node_with_token_authentication_and_one_token():
    launcher = manifest("launcher/aws.yaml")
    [(path, source)] = launcher["file_mounts"].items()
    assert source == "~/.ray/auth_token"
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        [start] = [command for command in launcher[key] if "ray start" in command]
        assert "RAY_AUTH_MODE=token" in start and f"RAY_AUTH_TOKEN_PATH={path}" in start, key


def test_the_cron_script_sends_a_token_it_finds_and_retries_a_head_not_ready():
    script = (CLUSTER / "schedule" / "submit.sh").read_text()
    assert "export RAY_AUTH_MODE=token" in script and "$HOME/.ray/auth_token" in script and "RAY_AUTH_TOKEN_PATH" in script
    assert "try again later" in script and "MMR5_SUBMIT_WAIT" in script


def test_uploads_and_images_leave_environments_caches_and_outputs_behind():
    excludes = yaml.safe_load((CLUSTER / "runtime_env.yaml").read_text())["excludes"]
    dockerignore = (REPO / ".dockerignore").read_text().split()
    for name in (".venv", ".git", "__pycache__", ".pytest_cache", "demo"):
        assert any(name in pattern for pattern in excludes), name
        assert any(name in pattern for pattern in dockerignore), name


FAKE_KUBECTL = r"""#!/usr/bin/env bash
# Stands in for kubectl: RayJobs listed from $KUBE/existing, created into $KUBE/created,
# and each status query answered by the next line of $KUBE/states.
set -eu
case "$1 $2" in
  "get rayjobs") cat "$KUBE/existing" ;;
  "create -f") echo "$3" >> "$KUBE/created"; echo "rayjob.ray.io/mmr5-rerank-x7k2p" ;;
  "get rayjob.ray.io/mmr5-rerank-x7k2p") head -n1 "$KUBE/states"; sed -i 1d "$KUBE/states" ;;
  *) echo "unexpected kubectl $*" >&2; exit 9 ;;
esac
"""


def run_cronjob_script(tmp_path, existing: str, states: list[str]):
    import os
    import subprocess

    documents = {document["kind"]: document for document in yaml_documents(CLUSTER / "schedule" / "cronjob.yaml")}
    pod = documents["CronJob"]["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    script = container({"template": {"spec": pod}})["args"][0]
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "kubectl").write_text(FAKE_KUBECTL)
    (tmp_path / "bin" / "kubectl").chmod(0o755)
    (tmp_path / "existing").write_text(existing)
    (tmp_path / "states").write_text("".join(state + "\n" for state in states))
    env = {**os.environ, "PATH": f"{tmp_path / 'bin'}:{os.environ['PATH']}", "KUBE": str(tmp_path), "POLL_SECONDS": "0"}
    done = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, timeout=60)
    created = (tmp_path / "created").read_text().split() if (tmp_path / "created").exists() else []
    return done, created


def test_a_cronjob_slot_creates_the_rayjob_and_waits_for_it_to_succeed(tmp_path):
    done, created = run_cronjob_script(
        tmp_path, "mmr5-rerank-old1=Complete\nmmr5-rerank-old2=Failed\n", ["/", "Initializing/", "Running/RUNNING", "Complete/SUCCEEDED"]
    )
    assert done.returncode == 0, done.stderr
    assert created == ["/etc/mmr5/rayjob.yaml"] and "rayjob.ray.io/mmr5-rerank-x7k2p succeeded" in done.stdout


def test_a_cronjob_slot_fails_when_its_rayjob_fails(tmp_path):
    done, created = run_cronjob_script(tmp_path, "", ["Running/RUNNING", "Retrying/FAILED", "Running/RUNNING", "Failed/FAILED"])
    assert done.returncode == 1 and created and "ended: Failed/FAILED" in done.stdout


def test_a_cronjob_slot_skips_while_an_earlier_rayjob_runs(tmp_path):
    # One still running, and one just created (no status yet).
    for slot, existing in enumerate(("mmr5-rerank-old1=Complete\nmmr5-rerank-busy=Running\n", "mmr5-rerank-new=\n")):
        (tmp_path / str(slot)).mkdir()
        done, created = run_cronjob_script(tmp_path / str(slot), existing, [])
        assert done.returncode == 0 and created == [] and "this slot skips" in done.stdout
