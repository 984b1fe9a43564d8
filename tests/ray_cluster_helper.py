"""A Ray cluster of several nodes on this machine (ray.cluster_utils.Cluster), kept in
a process of its own so the test process never becomes a Ray driver of it.

    python ray_cluster_helper.py NODES      prints {"address": ..., "nodes": [node ids]}
    then, one command per line on stdin:
      count                  prints "reply N", N the number of alive nodes
      remove NODE_ID         kills that node (its raylet and workers), prints "reply removed"
    end of input shuts the cluster down.

Token authentication is as the environment says (RAY_AUTH_MODE, RAY_AUTH_TOKEN).
"""

import json
import sys

import ray
from ray.cluster_utils import Cluster


def main() -> None:
    count = int(sys.argv[1])
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    nodes = [cluster.head_node] + [cluster.add_node(num_cpus=1) for _ in range(count - 1)]
    cluster.wait_for_nodes()
    print(json.dumps({"address": cluster.address, "nodes": [n.node_id for n in nodes]}), flush=True)
    try:
        for line in sys.stdin:
            words = line.split()
            if words == ["count"]:
                if not ray.is_initialized():
                    ray.init(address=cluster.address, logging_level="ERROR", log_to_driver=False)
                print("reply", sum(1 for n in ray.nodes() if n["Alive"]), flush=True)
            elif words[:1] == ["remove"]:
                node = next(n for n in nodes if n.node_id == words[1])
                cluster.remove_node(node, allow_graceful=False)
                print("reply removed", flush=True)
    finally:
        if ray.is_initialized():
            ray.shutdown()
        cluster.shutdown()


if __name__ == "__main__":
    main()
