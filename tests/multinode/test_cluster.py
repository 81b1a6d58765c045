"""The two-node cluster itself: both nodes alive, work spread over them, objects between them."""
import os
import subprocess
import sys

import pytest

from _netns_ray import ROOT

pytestmark = [pytest.mark.netns, pytest.mark.slow, pytest.mark.timeout(400)]


def test_tasks_and_actors_run_on_both_nodes(cluster):
    got = cluster.run("""
        @shoal.remote(num_cpus=1)
        def where(i):
            return shoal.get_runtime_context().node_id
        pg = shoal.placement_group([{"CPU": 1}, {"CPU": 1}], strategy="STRICT_SPREAD")
        shoal.get(pg.ready(), timeout=60)
        spread = shoal.get([where.options(placement_group=pg, placement_group_bundle_index=i).remote(i)
                            for i in range(2)], timeout=60)
        on_worker = shoal.get(where.options(resources={"worker": 1}).remote(0), timeout=60)
        on_head = shoal.get(where.options(resources={"head": 1}).remote(0), timeout=60)
        emit({"nodes": len([n for n in shoal.nodes() if n["Alive"]]), "spread": spread,
              "worker": on_worker, "head": on_head})
    """)
    assert got["nodes"] == 2
    assert len(set(got["spread"])) == 2
    assert got["worker"] != got["head"]
    assert set(got["spread"]) == {got["worker"], got["head"]}


def test_key_value_store_lives_on_the_head_node_even_when_a_worker_node_makes_it(cluster):
    got = cluster.run("""
import ray
import ray._private.state as ray_state

@shoal.remote(num_cpus=0, resources={"worker": 1})
def touch():
    shoal.get_kv_store().set("made-on", shoal.get_runtime_context().node_id)
    return shoal.get_runtime_context().node_id

maker = shoal.get(touch.remote(), timeout=60)
store_nodes = [a["Address"]["NodeID"] for a in ray_state.actors().values()
               if a.get("Name") == "shoal_kv" and a["State"] == "ALIVE"]
head = [n["NodeID"] for n in ray.nodes() if n["Alive"] and "node:__internal_head__" in n["Resources"]]
emit({"maker": maker, "store": store_nodes, "head": head})
""")
    assert got["store"] == got["head"] != [got["maker"]]


def test_the_kubernetes_job_program_runs_on_the_cluster(cluster, tmp_path):
    out = cluster.run_program(os.path.join(ROOT, "deploy", "kubernetes", "shoal_job.py"),
                              env={"SHOAL_STORAGE": str(tmp_path)})
    assert "cluster: 2 node(s), 6 CPUs" in out
    assert "trained 2 workers" in out


def test_core_conformance_suite_passes_on_the_two_node_cluster(cluster):
    # tests/core's Ray half, run by a driver on the head node against this cluster; the
    # tests that count the CPUs of a 2-CPU local cluster are left out (this one has 6)
    out = subprocess.run(
        ["ip", "netns", "exec", cluster.head_ns, sys.executable, "-m", "pytest", "-q", "-m", "ray",
         "-p", "no:cacheprovider", "-k",
         "not (cluster_and_available_resources or attaches_to_a_running_ray"
         " or resource_all_taken_is_absent)",
         os.path.join(ROOT, "tests", "core", "test_conformance.py")],
        env={**cluster.env, "SHOAL_TEST_RAY_ADDRESS": cluster.address}, cwd=ROOT,
        capture_output=True, text=True, timeout=360)
    assert out.returncode == 0, out.stdout[-6000:] + out.stderr[-3000:]
    assert " passed" in out.stdout and " failed" not in out.stdout
