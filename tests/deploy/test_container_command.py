"""The image's own command line: ENTRYPOINT + CMD + ENV of deploy/Dockerfile's run stage, read
from the file and run outside a container against the default model (container_launch.py says
what differs: the /models path and the device). /health must answer, the HEALTHCHECK command must
pass, and both EXPOSEd ports must serve."""
from container_launch import assert_port_checks, port_checks
from deploy_files import healthcheck


def test_image_command_line_serves(launch, runtime):
    argv = runtime.exec_form("ENTRYPOINT") + (runtime.exec_form("CMD") or [])
    env = runtime.env()
    _, hc = healthcheck(runtime)
    exposed = [int(p.split("/")[0]) for i in runtime.all("EXPOSE") for p in i.args.split()]
    checks = [{"id": "health", "type": "http", "port": int(env["STEMSERVE_PORT"]), "path": "/health"},
              {"id": "HEALTHCHECK", "type": "command", "argv": hc}]
    checks += port_checks(env, exposed, "EXPOSE")
    report = launch(argv, env, checks)
    assert report["results"]["health"]["status"] == 200
    assert report["results"]["HEALTHCHECK"]["returncode"] == 0, report["results"]["HEALTHCHECK"]
    assert_port_checks(report, "EXPOSE")
    # The server bound what the image says: all interfaces, the image's ports (in a network
    # namespace of its own these are the very numbers; else free ports stood in for them).
    host, port = env["STEMSERVE_HOST"], env["STEMSERVE_PORT"]
    if launch.netns:
        assert f"listening on http://{host}:{port} " in report["log"], report["log"]
    else:
        assert f"listening on http://{host}:" in report["log"], report["log"]
    assert report["exit_code"] == 0, report["log"]


def test_prepare_command_line_finds_the_model_in_place(stages, runtime, tmp_path):
    """The prepare stage's command, with /models mapped as for the server, on a model folder that is
    already complete: it checks the folder and changes nothing."""
    import os
    import subprocess
    from container_launch import local_model_dir
    from deploy_files import ROOT
    prepare = next(s for s in stages if s.name == "prepare")
    argv = prepare.exec_form("ENTRYPOINT") + prepare.exec_form("CMD")
    def local(arg):  # the image's /opt/stemserve is this checkout; /models the model's folder
        for image_dir, here in (("/opt/stemserve/", f"{ROOT}/"), ("/models/", f"{local_model_dir()}/")):
            if arg.startswith(image_dir):
                return here + arg[len(image_dir):]
        return arg
    argv = [local(a) for a in argv]
    out_dir = argv[argv.index("--out") + 1]
    if not os.path.exists(os.path.join(out_dir, "model.safetensors")):
        import pytest
        pytest.skip(f"default model not prepared at {out_dir}")
    env = dict(os.environ, STEM_PYTHON=str(ROOT / ".venv" / "bin" / "python"))
    out = subprocess.run(argv, capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "nothing to do" in out.stdout, out.stdout
