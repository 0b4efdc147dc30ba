"""deploy/k8s: the manifests' structure and references, and the Deployment's container run outside a
cluster (image environment, then the manifest's), with every probe, port and scrape path the
manifests name asked of the real server."""
import re

import pytest
import yaml

from container_launch import assert_port_checks, port_checks
from deploy_files import K8S, ROOT


@pytest.fixture(scope="session")
def deployment(k8s):
    return k8s[("Deployment", "stemserve")]


@pytest.fixture(scope="session")
def container(deployment):
    return deployment["spec"]["template"]["spec"]["containers"][0]


def container_env(runtime, container):
    """The image's ENV, then the manifest's (a valueFrom of an optional Secret that is absent adds
    nothing)."""
    env = dict(runtime.env())
    for e in container.get("env", []):
        if "value" in e:
            env[e["name"]] = str(e["value"])
        else:
            assert e["valueFrom"]["secretKeyRef"].get("optional"), f"{e['name']} needs a Secret that may not exist"
    return env


def named_port(container, port):
    if isinstance(port, int):
        return port
    return next(p["containerPort"] for p in container["ports"] if p["name"] == port)


def test_manifests_match_the_kubernetes_api_schemas(k8s):
    """Every object under deploy/k8s against the API schemas of the Kubernetes release that
    kubernetes-validate (requirements.txt) ships last, strictly: an unknown field fails too."""
    import kubernetes_validate
    version = kubernetes_validate.latest_version()
    assert k8s
    for (kind, name), obj in k8s.items():
        doc = {k: v for k, v in obj.items() if k != "_file"}
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            pytest.fail(f"{obj['_file']}: {kind}/{name} is no valid {kind} of Kubernetes {version}: {e.message} "
                        f"(at {'.'.join(map(str, e.path))})")


def test_kustomization_lists_files_that_exist():
    kust = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    for res in kust["resources"]:
        assert (K8S / res).is_file(), res
    kinds = {yaml.safe_load((K8S / r).read_text())["kind"] for r in kust["resources"]}
    assert {"Deployment", "Service", "HorizontalPodAutoscaler", "PersistentVolumeClaim"} <= kinds


def test_settings_are_real_stemserve_variables(container, env_names):
    unknown = [e["name"] for e in container["env"] if e["name"].startswith("STEMSERVE_") and e["name"] not in env_names]
    assert not unknown, f"no such setting of stemserve serve: {unknown}"


def test_selectors_match(k8s, deployment):
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    service = k8s[("Service", "stemserve")]
    assert service["spec"]["selector"].items() <= labels.items()


def test_gpu_limit_and_non_root(deployment, container, runtime):
    assert int(container["resources"]["limits"]["nvidia.com/gpu"]) >= 1
    pod_sc = deployment["spec"]["template"]["spec"]["securityContext"]
    assert pod_sc["runAsNonRoot"] and str(pod_sc["runAsUser"]) == runtime.all("USER")[-1].args.split(":")[0]


def test_model_comes_from_the_claim(k8s, deployment, container, runtime):
    pod = deployment["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    mount = next(m for m in container["volumeMounts"] if m["mountPath"] == "/models")
    claim = volumes[mount["name"]]["persistentVolumeClaim"]["claimName"]
    assert ("PersistentVolumeClaim", claim) in k8s
    assert container_env(runtime, container)["STEMSERVE_MODEL"].startswith("/models/")
    job = k8s[("Job", "stemserve-prepare-model")]["spec"]["template"]["spec"]
    assert job["volumes"][0]["persistentVolumeClaim"]["claimName"] == claim
    args = job["containers"][0]["args"]
    assert args[args.index("--out") + 1] == container_env(runtime, container)["STEMSERVE_MODEL"]


def test_service_targets_container_ports(k8s, container):
    service = k8s[("Service", "stemserve")]
    targets = {named_port(container, p["targetPort"]) for p in service["spec"]["ports"]}
    assert targets == {p["containerPort"] for p in container["ports"]} == {8000, 50051}
    assert {p["name"] for p in service["spec"]["ports"]} == {"http", "grpc"}


def test_hpa_scales_the_deployment_on_the_queue_metric(k8s):
    hpa = k8s[("HorizontalPodAutoscaler", "stemserve")]
    assert hpa["apiVersion"] == "autoscaling/v2"
    ref = hpa["spec"]["scaleTargetRef"]
    assert (ref["kind"], ref["name"]) in k8s
    pods = [m["pods"] for m in hpa["spec"]["metrics"] if m["type"] == "Pods"]
    assert pods and pods[0]["metric"]["name"] == "stemserve_num_requests_waiting"
    adapter = yaml.safe_load((K8S / "prometheus-adapter-values.yaml").read_text())
    exported = {r["name"]["as"] for r in adapter["rules"]["custom"]}
    assert pods[0]["metric"]["name"] in exported, "prometheus-adapter must serve the HPA's metric"
    metrics_cc = (ROOT / "server" / "metrics.cc").read_text()
    for rule in adapter["rules"]["custom"]:
        series = re.match(r"\w+", rule["seriesQuery"]).group(0)
        assert f'"{series}"' in metrics_cc, f"{series} is no metric of server/metrics.cc"


def test_probes_ports_and_metrics_answer(launch, runtime, deployment, container):
    """The container as the manifest runs it, and every endpoint a probe, the Service or the
    scrape annotations name."""
    env = container_env(runtime, container)
    argv = container.get("command") or runtime.exec_form("ENTRYPOINT")
    argv = argv + (container.get("args") or ([] if container.get("command") else runtime.exec_form("CMD") or []))
    checks = []
    for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
        get = container[kind]["httpGet"]
        checks.append({"id": kind, "type": "http", "port": named_port(container, get["port"]), "path": get["path"]})
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    checks.append({"id": "scrape", "type": "http", "port": int(annotations["prometheus.io/port"]),
                   "path": annotations["prometheus.io/path"]})
    checks += port_checks(env, [p["containerPort"] for p in container["ports"]], "k8s")
    report = launch(argv, env, checks)
    for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert report["results"][kind]["status"] == 200, (kind, report["results"][kind])
    scrape = report["results"]["scrape"]
    assert scrape["status"] == 200
    assert re.search(r"^stemserve_num_requests_waiting \d", scrape["body"], re.M), scrape["body"][:500]
    assert_port_checks(report, "k8s")
    assert report["exit_code"] == 0, "SIGTERM must end the server cleanly"


def test_termination_grace_outlasts_the_drain(deployment, container, runtime):
    env = container_env(runtime, container)
    drain = float(env.get("STEMSERVE_SHUTDOWN_TIMEOUT", 30))
    pre_stop = float(container["lifecycle"]["preStop"]["exec"]["command"][-1])
    assert deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > drain + pre_stop
