"""deploy/compose.yaml: its structure, and the service's command line run outside a container (its
environment over the image's), with the health check and the published ports probed."""
import pytest

from container_launch import assert_port_checks, port_checks
from deploy_files import ROOT, compose_interpolate

DEPLOY = ROOT / "deploy"


@pytest.fixture(scope="session")
def service(compose):
    return compose["services"]["stemserve"]


def container_ports(service):
    return [int(str(p).split(":")[-1].split("/")[0]) for p in service["ports"]]


def test_builds_the_image_from_the_dockerfile(compose, stages):
    names = {s.name for s in stages}
    for svc in compose["services"].values():
        build = svc["build"]
        context = (DEPLOY / build["context"]).resolve()
        assert context == ROOT, "the build context is the repository root (.dockerignore lives there)"
        assert (context / build["dockerfile"]).resolve() == (DEPLOY / "Dockerfile").resolve()
        assert build["target"] in names
    assert compose["services"]["stemserve"]["build"]["target"] == stages[-1].name


def test_reserves_a_gpu(service):
    devices = service["deploy"]["resources"]["reservations"]["devices"]
    assert any(d["driver"] == "nvidia" and "gpu" in d["capabilities"] and (d.get("count") or d.get("device_ids"))
               for d in devices), devices


def mounts(svc, environ=None):
    """The service's volumes as [source, target, ...], interpolated against environ (none set)."""
    return [compose_interpolate(v, environ or {}).split(":") for v in svc["volumes"]]


def test_model_volume_is_mounted_at_models(compose, service):
    assert any(m[1] == "/models" and m[0] in compose["volumes"] for m in mounts(service)), service["volumes"]
    # STEMSERVE_MODELS, a host folder, stands in for the volume (CI's image test mounts its model so).
    assert ["/srv/models", "/models", "ro"] in mounts(service, {"STEMSERVE_MODELS": "/srv/models"})
    env = {k: compose_interpolate(str(v), {}) for k, v in service["environment"].items()}
    assert env["STEMSERVE_MODEL"].startswith("/models/")


def test_prepare_is_opt_in_and_fills_the_same_volume(compose, service):
    prepare = compose["services"]["prepare"]
    assert prepare.get("profiles"), "`docker compose up` must not run the model preparation"
    served = {m[0] for m in mounts(service)}
    assert any(m[0] in served and m[1] == "/models" for m in mounts(prepare))


def test_cpu_form_is_the_server_less_the_gpu(compose, service):
    """`--profile cpu up stemserve-cpu`: the same server on the CPU image (DEVICE=cpu on a local
    Debian base), only by profile, so that a plain `up` starts the GPU server alone."""
    cpu = compose["services"]["stemserve-cpu"]
    assert cpu["profiles"] == ["cpu"] and not service.get("profiles")
    for key in ("environment", "ports", "volumes", "healthcheck", "stop_grace_period"):
        assert cpu[key] == service[key], key
    assert "deploy" not in cpu
    args = {k: compose_interpolate(str(v), {}) for k, v in cpu["build"]["args"].items()}
    assert args == {"BUILD_BASE": "stemserve-base:debian12", "RUNTIME_BASE": "stemserve-base:debian12",
                    "DEVICE": "cpu"}
    assert cpu["image"].startswith("stemserve-cpu:")


def test_settings_are_real_stemserve_variables(compose, env_names):
    for name, svc in compose["services"].items():
        unknown = [k for k in svc.get("environment", {}) if k.startswith("STEMSERVE_") and k not in env_names]
        assert not unknown, f"{name}: no such setting of stemserve serve: {unknown}"


def test_healthcheck_and_ports_answer(launch, runtime, service):
    env = dict(runtime.env())
    env.update({k: compose_interpolate(str(v), {}) for k, v in service["environment"].items()})
    test = service["healthcheck"]["test"]
    assert test[0] in ("CMD", "CMD-SHELL"), test
    hc = test[1:] if test[0] == "CMD" else ["/bin/sh", "-c", test[1]]
    assert any("/health" in word for word in hc), hc
    argv = runtime.exec_form("ENTRYPOINT") + (service.get("command") or runtime.exec_form("CMD") or [])
    checks = [{"id": "healthcheck", "type": "command", "argv": hc}]
    checks += port_checks(env, container_ports(service), "compose")
    report = launch(argv, env, checks)
    assert report["results"]["healthcheck"]["returncode"] == 0, report["results"]["healthcheck"]
    assert_port_checks(report, "compose")
    published = {int(str(p).split(":")[0]) for p in service["ports"]}
    assert published == {8000, 50051}, "docs/deploy.md promises these on the host"


def test_stop_grace_outlasts_the_drain(service, runtime):
    grace = service.get("stop_grace_period", "10s")
    assert grace.endswith("s") and int(grace[:-1]) > 30, "SIGTERM drains for --shutdown-timeout (30 s) first"
