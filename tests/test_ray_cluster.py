"""lenet on a real 2-node Ray cluster on this machine (ray.cluster_utils.Cluster, one CPU
per node), token authentication on: runs placed on both nodes with all their files
back, a node killed mid-run, a node that cannot see the output folder, a wrong token.

The cluster lives in a helper process (tests/ray_cluster_helper.py) and every driver
is a `lenet` subprocess, as on a real cluster; each test ends what it started."""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import yaml

from conftest import write_tiny_dataset

pytest.importorskip("ray", reason="Ray is an extra: pip install -e '.[ray]' (scripts/test.sh installs it)")

pytestmark = [pytest.mark.xdist_group("ray"), pytest.mark.slow]
HELPER = Path(__file__).with_name("ray_cluster_helper.py")
RAY = Path(sys.executable).with_name("ray")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    home = tmp_path_factory.mktemp("home")  # no ~/.ray/auth_token: the token is only the one given
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(16), "HOME": str(home),
           "RAY_worker_niceness": "0"}
    env.pop("RAY_ADDRESS", None)
    helper = subprocess.Popen([sys.executable, str(HELPER), "2"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True, env=env, start_new_session=True)
    try:
        info = json.loads(helper.stdout.readline())

        def ask(command: str) -> str:
            helper.stdin.write(command + "\n")
            helper.stdin.flush()
            while not (line := helper.stdout.readline()).startswith("reply "):  # skip Ray's own lines
                assert line, "the cluster helper died"
            return line.removeprefix("reply ").strip()

        root = tmp_path_factory.mktemp("cluster")
        write_tiny_dataset(root / "data" / "fashion-mnist")
        write_tiny_dataset(root / "bigger" / "fashion-mnist", n_train=6000)
        yield SimpleNamespace(address=info["address"], nodes=info["nodes"], env=env, ask=ask, root=root)
    finally:
        helper.stdin.close()  # the helper's cue to shut its cluster down
        wait_or_kill_group(helper, 90)
        helper.stdout.close()


def wait_or_kill_group(proc: subprocess.Popen, timeout: float) -> None:
    """Give a process asked to stop ``timeout`` s, then SIGKILL its whole group."""
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def spec(cluster, name: str, data: str = "data", epochs: int = 2, seeds: int = 2) -> Path:
    path = cluster.root / f"{name}.yaml"
    path.write_text(yaml.safe_dump({
        "name": name, "base": "d2l", "seeds": seeds,
        "common": {"train.epochs": epochs, "train.batch_size": 64, "data.data_dir": str(cluster.root / data)},
        "grid": {"model.pool": ["avg", "max"]}}))
    return path


def lenet(cluster, *args: str, env: dict | None = None, wait: bool = True):
    proc = subprocess.Popen([sys.executable, "-m", "lenet", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**cluster.env, **(env or {})}, start_new_session=True)
    if not wait:
        return proc
    out, err = proc.communicate(timeout=300)
    return proc.returncode, out, err


def test_runs_are_placed_on_both_nodes_and_all_their_files_arrive(cluster):
    out = cluster.root / "runs"
    code, printed, err = lenet(cluster, "sweep", str(spec(cluster, "both")), "--backend", "ray",
                               "--address", cluster.address, "--out", str(out))
    assert code == 0, err
    assert f"on the Ray cluster at {cluster.address}: 2 node(s), 2 CPU(s)" in printed
    used = set()
    for run_dir in sorted((out / "both").glob("pool=*")):
        environment = json.loads((run_dir / "environment.json").read_text())
        used.add(environment["ray_node_id"])
        for name in ("model.safetensors", "metrics.jsonl", "checkpoint.pt", "curves.png", "config.yaml"):
            assert (run_dir / name).is_file(), f"{run_dir.name}/{name} did not arrive"
        assert list(run_dir.glob("events.out.tfevents.*"))
    assert used == set(cluster.nodes)
    assert (out / "both" / "summary.md").is_file()


def test_a_node_killed_mid_run_is_retried_from_the_checkpoint_on_another(cluster):
    out = cluster.root / "runs"
    driver = lenet(cluster, "sweep", str(spec(cluster, "node", data="bigger", epochs=6, seeds=1)), "--backend",
                   "ray", "--address", cluster.address, "--out", str(out), wait=False)
    worker_node = cluster.nodes[1]

    def on_worker_node_with_two_epochs() -> Path | None:
        for run_dir in (out / "node").glob("pool=*"):
            env, metrics = run_dir / "environment.json", run_dir / "metrics.jsonl"
            if env.is_file() and metrics.is_file() and json.loads(env.read_text()).get("ray_node_id") == worker_node \
                    and len(metrics.read_text().splitlines()) >= 2:
                return run_dir
        return None

    deadline = time.monotonic() + 120
    while (victim := on_worker_node_with_two_epochs()) is None:
        assert time.monotonic() < deadline and driver.poll() is None, "no run reached epoch 2 on the second node"
        time.sleep(0.05)
    assert cluster.ask(f"remove {worker_node}") == "removed"
    printed, err = driver.communicate(timeout=300)
    assert driver.returncode == 0, err
    assert f"{victim.name.removesuffix('-s0')} s0: its node died" in printed or "died; retry 1 of 3" in printed
    assert "from its last checkpoint" in printed
    epochs = [json.loads(line)["epoch"] for line in (victim / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2, 3, 4, 5, 6]
    assert "resuming" in (victim / "train.log").read_text()
    deadline = time.monotonic() + 90  # until Ray's health checks have marked the node dead
    while int(cluster.ask("count")) != 1:
        assert time.monotonic() < deadline, "the removed node is still listed as alive"
        time.sleep(1)


def test_a_folder_one_node_cannot_see_is_refused_before_any_run(cluster):
    private = cluster.root / "head-only"
    private.mkdir()
    before = int(cluster.ask("count"))
    # A node whose view of that folder is an empty tmpfs of its own (a private mount namespace):
    # what a node without the shared mount sees.
    node = subprocess.Popen(["unshare", "-m", "sh", "-c",
                             f"mount -t tmpfs lenet-test '{private}' && exec '{RAY}' start --address="
                             f"{cluster.address} --num-cpus=1 --block"],
                            env=cluster.env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 90
        while int(cluster.ask("count")) < before + 1:
            assert node.poll() is None, f"the extra node did not start: {node.stderr.read()}"
            assert time.monotonic() < deadline, "the extra node did not join"
            time.sleep(0.5)
        code, _, err = lenet(cluster, "sweep", str(spec(cluster, "private")), "--backend", "ray",
                             "--address", cluster.address, "--out", str(private))
        assert code == 3, err
        assert f"{private} is not visible from 1 of the {before + 1} nodes" in err
        assert "storage every node sees" in err
        assert not (private / "private").exists()
        # Your own data (data.path) must be seen by every node too, as --out is.
        np.savez(private / "own.npz", x_train=np.zeros((8, 8, 8), np.uint8), y_train=np.arange(8) % 2,
                 x_test=np.zeros((4, 8, 8), np.uint8), y_test=np.arange(4) % 2)
        code, _, err = lenet(cluster, "sweep", str(spec(cluster, "own-data")), "--backend", "ray",
                             "--address", cluster.address, "--out", str(cluster.root / "out"),
                             "--set", f"data.path={private / 'own.npz'}")
        assert code == 3, err
        assert f"lacks {private / 'own.npz'}" in err and "data.path" in err
    finally:
        os.killpg(node.pid, signal.SIGTERM)
        wait_or_kill_group(node, 30)
        node.stderr.close()


def test_a_client_without_the_clusters_token_is_refused_with_what_to_do(cluster):
    code, _, err = lenet(cluster, "sweep", str(spec(cluster, "token")), "--backend", "ray",
                         "--address", cluster.address, "--out", str(cluster.root / "runs"),
                         env={"RAY_AUTH_TOKEN": secrets.token_hex(16)})
    assert code == 3
    assert f"the Ray cluster at {cluster.address} refused this machine" in err
    assert "RAY_AUTH_TOKEN_PATH" in err and "ray get-auth-token" in err
    assert "Traceback" not in err


def test_an_address_where_no_cluster_listens_is_one_line_at_once(cluster):
    tic = time.monotonic()
    code, _, err = lenet(cluster, "sweep", str(spec(cluster, "nowhere")), "--backend", "ray",
                         "--address", "127.0.0.1:1", "--out", str(cluster.root / "runs"))
    assert code == 3 and "no Ray cluster answers at 127.0.0.1:1" in err and "Traceback" not in err
    assert time.monotonic() - tic < 30  # not Ray's minute of retries


def test_without_an_address_a_local_ray_of_its_own_is_started_not_the_last_ray_start(cluster):
    # The cluster above wrote its address to /tmp/ray/ray_current_cluster, as `ray start`
    # does (and a dead one leaves it behind); plain ray.init() would join it and then
    # refuse num_cpus. No --address and no RAY_ADDRESS means a Ray of lenet's own.
    from ray._private.utils import read_ray_address

    assert read_ray_address() == cluster.address
    out = cluster.root / "own"
    env = {k: v for k, v in cluster.env.items() if k != "RAY_worker_niceness"}  # Ray's default, as for users
    done = subprocess.run([sys.executable, "-m", "lenet", "sweep", str(spec(cluster, "own", epochs=1, seeds=1)),
                           "--backend", "ray", "--cpus-per-run", "1", "--out", str(out)],
                          capture_output=True, text=True, env=env, timeout=300)
    code, printed, err = done.returncode, done.stdout, done.stderr
    assert code == 0, err
    assert "on a local Ray: 1 node(s)" in printed
    assert "RAY_AUTH_MODE=disabled" not in err  # Ray's advice to switch the token off is not passed on
    environments = [json.loads((d / "environment.json").read_text()) for d in (out / "own").glob("pool=*")]
    used = {e["ray_node_id"] for e in environments}
    assert len(used) == 1 and not used & set(cluster.nodes)
    assert {e["nice"] for e in environments} == {os.nice(0)}  # not the nice 15 Ray gives its workers
    # --address auto is Ray's way to join that last `ray start` instead.
    code, printed, err = lenet(cluster, "sweep", str(spec(cluster, "auto", epochs=1, seeds=1)), "--backend", "ray",
                               "--address", "auto", "--out", str(out))
    assert code == 0, err
    assert f"on the Ray cluster at auto: {cluster.ask('count')} node(s)" in printed
