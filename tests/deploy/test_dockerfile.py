"""deploy/Dockerfile and .dockerignore, read as Docker would: the stages and their images, what the
build copies and runs, and what the server image declares. (CI also builds and runs the image:
deploy/ci/image_test.py, a phase of .ci/run.)"""
import re
import subprocess

import pytest

from deploy_files import DOCKERFILE, ROOT, DockerIgnore, context_size, copy_sources, healthcheck, tracked_files


def project_version():
    return re.search(r"project\(stemserve\b.*VERSION ([\d.]+)", (ROOT / "CMakeLists.txt").read_text()).group(1)


def test_stages_build_on_cuda_devel_and_run_on_the_matching_runtime(stages):
    by_name = {s.name: s for s in stages}
    build, runtime = by_name["build"], stages[-1]
    m = re.fullmatch(r"nvidia/cuda:(13\.0\.\d+)-devel-(ubuntu24\.04)", build.image)
    assert m, f"build stage image {build.image}: want nvidia/cuda:13.0.x-devel-ubuntu24.04"
    assert runtime.image == f"nvidia/cuda:{m.group(1)}-runtime-{m.group(2)}", runtime.image
    assert runtime.name == "runtime"


def test_every_image_has_a_pinned_tag(stages, compose, k8s):
    images = [s.image for s in stages]
    images += [svc["image"] for svc in compose["services"].values() if "image" in svc]
    for obj in k8s.values():
        spec = obj.get("spec", {})
        pod = spec.get("template", {}).get("spec", {})
        images += [c["image"] for c in pod.get("containers", []) + pod.get("initContainers", [])]
    for image in images:
        name, _, tag = image.rpartition(":")
        assert name and "/" not in tag and tag not in ("", "latest"), f"image '{image}' needs an explicit tag"
    ours = [i for i in images if i.split(":")[0] in ("stemserve", "stemserve-cpu", "stemserve-prepare")]
    assert ours and all(i.endswith(":" + project_version()) for i in ours), ours


def test_copied_files_exist_in_a_clone_and_pass_dockerignore(stages):
    ignore = DockerIgnore()
    tracked = tracked_files()
    copies = [(i, src) for s in stages for i in s.all("COPY") + s.all("ADD") for src in copy_sources(i)]
    assert copies
    for instr, src in copies:
        src = src.rstrip("/")
        under = [f for f in tracked if f == src or f.startswith(src + "/")]
        assert under, f"Dockerfile line {instr.line}: COPY {src}: no such tracked file or folder"
        assert not ignore.excluded(src), f"Dockerfile line {instr.line}: COPY {src}: .dockerignore leaves it out"
        # Inside a copied folder only documentation may be left out.
        dropped = [f for f in under if ignore.excluded(f) and not f.endswith((".md", ".png"))]
        assert not dropped, f"COPY {src}: .dockerignore leaves out {dropped[:5]}"


def test_copied_scripts_bring_what_they_source(stages):
    """A script copied by name (to be run: the folders copied whole are sources for CMake) that
    sources another file of the tree (`source "$root/..."`) the stage lacks fails only in `docker
    build` (scripts/build.sh sources scripts/ccache_env.sh)."""
    checked = 0
    for stage in stages:
        copied = {src.rstrip("/") for i in stage.all("COPY") for src in copy_sources(i)}
        for src in sorted(c for c in copied if c.endswith(".sh")):
            script = ROOT / src
            if script.is_file():
                for needed in re.findall(r'^\s*(?:source|\.) "\$root/([^"]+)"', script.read_text(), re.M):
                    checked += 1
                    assert any(needed == c or needed.startswith(c + "/") for c in copied), \
                        f"stage {stage.name}: {src} sources {needed}, which it does not copy"
    assert checked, "no copied script sources anything: the pattern no longer matches scripts/build.sh"


def test_build_stage_copies_every_cmake_subdirectory(stages):
    """A folder the top-level CMakeLists.txt adds but the image lacks breaks only `docker build`."""
    build = next(s for s in stages if s.name == "build")
    copied = {src.rstrip("/") for i in build.all("COPY") for src in copy_sources(i)}
    subdirs = re.findall(r"add_subdirectory\((\w+)\)", (ROOT / "CMakeLists.txt").read_text())
    run = " ".join(i.args for i in build.all("RUN"))
    assert "-DSTEM_BUILD_TESTS=OFF" in run
    missing = [d for d in subdirs if d != "tests" and d not in copied]
    assert not missing, f"the build stage does not COPY {missing}"


def test_build_runs_the_scripts_ci_runs(stages):
    build = next(s for s in stages if s.name == "build")
    runs = [i.args for i in build.all("RUN")]
    # CI: .ci/run -> scripts/test.sh -> scripts/bootstrap.sh (-> install_packages.sh) + scripts/build.sh
    assert "scripts/test.sh" in (ROOT / ".ci" / "run").read_text()
    test_sh = (ROOT / "scripts" / "test.sh").read_text()
    assert "scripts/bootstrap.sh" in test_sh and "scripts/build.sh" in test_sh
    assert "scripts/install_packages.sh" in (ROOT / "scripts" / "bootstrap.sh").read_text()
    assert any(re.search(r"scripts/install_packages\.sh(\s|$|&)", r) for r in runs), runs
    build_runs = [r for r in runs if "scripts/build.sh" in r]
    assert len(build_runs) == 1, runs
    # DEVICE (cuda by default) picks the backend: -DSTEM_CUDA=ON for cuda, OFF for cpu.
    assert re.search(r"scripts/build\.sh\s+-DSTEM_CUDA=\$cuda\b", build_runs[0]), build_runs[0]
    assert re.search(r'cuda=\$\(\[ "\$DEVICE" = cuda \] && echo ON \|\| echo OFF\)', build_runs[0]), build_runs[0]
    assert "cmake " not in build_runs[0], "configure and build through scripts/build.sh only"


def test_device_argument_picks_backend_and_server_device(stages, runtime):
    """One Dockerfile for both images: DEVICE=cuda (the default: nvidia/cuda bases) or cpu (any
    Debian 12 / Ubuntu 24.04 base by BUILD_BASE and RUNTIME_BASE, as CI's image test builds)."""
    build = next(s for s in stages if s.name == "build")
    assert build.arg("DEVICE") == runtime.arg("DEVICE") == "cuda"
    assert runtime.env()["STEMSERVE_DEVICE"] == "cuda"
    assert any("STEMSERVE_DEVICE=${DEVICE}" in i.args for i in runtime.all("ENV"))
    text = DOCKERFILE.read_text()
    assert re.search(r"^FROM \$\{BUILD_BASE\} AS build$", text, re.M)
    assert re.search(r"^FROM \$\{RUNTIME_BASE\} AS runtime$", text, re.M)
    assert "# syntax=" not in text, "a syntax line makes BuildKit fetch its frontend from a registry"


def test_package_list_is_one_list():
    listed = subprocess.run([str(ROOT / "scripts/install_packages.sh"), "--list"], capture_output=True, text=True,
                            check=True).stdout.split()
    assert {"cmake", "libgrpc++-dev", "libcpp-httplib-dev", "prometheus-cpp-dev"} <= set(listed)
    for path in ("scripts/bootstrap.sh", "deploy/Dockerfile"):
        text = (ROOT / path).read_text()
        assert "libgrpc++-dev" not in text and "prometheus-cpp-dev" not in text, f"{path} repeats the package list"


def test_runtime_packages_names_what_the_binary_links(serve_help):
    """The script the build stage runs to list the run stage's packages, on this machine's binary."""
    from container_launch import stemserve_binary
    out = subprocess.run([str(ROOT / "deploy/runtime_packages.sh"), str(stemserve_binary())], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    pkgs = dict(line.split("=", 1) for line in out.stdout.split())
    assert any(p.startswith("libgrpc++") for p in pkgs) and any(p.startswith("libcpp-httplib") for p in pkgs), pkgs
    assert not [p for p in pkgs if p.endswith("-dev")], pkgs


def test_runtime_stage_has_only_the_binary_and_its_libraries(runtime):
    copies = runtime.all("COPY")
    assert copies and all("from" in c.flags for c in copies), "the run stage copies from the build stage only"
    installs = " ".join(i.args for i in runtime.all("RUN"))
    assert "runtime-packages.txt" in installs and "--no-install-recommends" in installs
    assert not re.search(r"\b\S+-dev\b", installs), installs


def test_runtime_user_is_not_root(runtime):
    user = runtime.all("USER")[-1].args
    uid = user.split(":")[0]
    assert uid.isdigit() and int(uid) != 0, f"USER {user}: want a numeric non-root id (Kubernetes runAsNonRoot)"
    assert any(f"--uid {uid}" in i.args for i in runtime.all("RUN")), "the user is created in the image"


def test_entrypoint_serves_on_all_interfaces(runtime):
    assert runtime.exec_form("ENTRYPOINT") == ["stemserve", "serve"]
    env = runtime.env()
    assert env["STEMSERVE_HOST"] == "0.0.0.0"
    assert re.fullmatch(r"/models/[\w.-]+", env["STEMSERVE_MODEL"]), env["STEMSERVE_MODEL"]


def test_settings_are_real_stemserve_variables(runtime, env_names):
    unknown = [k for k in runtime.env() if k.startswith("STEMSERVE_") and k not in env_names]
    assert not unknown, f"ENV names no flag of `stemserve serve`: {unknown}"


def test_every_serve_flag_has_an_environment_variable(serve_help):
    """Every setting through STEMSERVE_*: a serve flag without one could not be set in the image."""
    flags = re.findall(r"^\s+(--[\w-]+)([^\n]*)", serve_help, re.M)
    missing = [f for f, rest in flags if f != "--help" and "Env:STEMSERVE_" not in rest]
    assert not missing, f"serve flags without a STEMSERVE_* variable: {missing}"


def test_exposes_the_http_and_grpc_ports(runtime):
    env = runtime.env()
    exposed = {int(p.split("/")[0]) for i in runtime.all("EXPOSE") for p in i.args.split()}
    assert exposed == {8000, 50051} == {int(env["STEMSERVE_PORT"]), int(env["STEMSERVE_GRPC_PORT"])}


def test_healthcheck_uses_a_tool_the_image_installs(runtime):
    options, cmd = healthcheck(runtime)
    assert "/health" in cmd[-1] and "${STEMSERVE_PORT}" in cmd[-1], cmd
    tool = cmd[-1].split()[0] if cmd[0] == "/bin/sh" else cmd[0]
    installs = " ".join(i.args for i in runtime.all("RUN"))
    assert re.search(rf"apt-get install[^&]*\b{tool}\b", installs), f"HEALTHCHECK runs {tool}; the run stage must install it"
    assert options.get("start-period"), "a start period covers the model's loading"


def test_prepare_stage_writes_where_the_server_reads(stages, runtime):
    prepare = next(s for s in stages if s.name == "prepare")
    assert stages.index(prepare) < len(stages) - 1, "prepare must not be the default (last) stage"
    entry = prepare.exec_form("ENTRYPOINT") + prepare.exec_form("CMD")
    assert entry[0].endswith("models/prepare/prepare_default_model.sh")
    assert entry[entry.index("--out") + 1] == runtime.env()["STEMSERVE_MODEL"]
    assert prepare.all("USER")[-1].args == runtime.all("USER")[-1].args, "same owner for the files it writes"
    pip = " ".join(i.args for i in prepare.all("RUN"))
    assert "requirements.txt" in pip, "the prepare stage takes its versions from requirements.txt"


def test_build_context_stays_small():
    size, files = context_size(DockerIgnore())
    assert size < 32 << 20, f"the build context would be {size >> 20} MiB in {files} files: extend .dockerignore"
    ignore = DockerIgnore()
    for path in (".git", ".venv", "build", "build-deploy", "models/cache/x.safetensors", ".whl", "tests/fixtures",
                 "engine/__pycache__/x.pyc"):
        assert ignore.excluded(path), path
    for path in ("engine/engine.cc", "CMakeLists.txt", "scripts/build.sh", "models/prepare/convert_gguf.py"):
        assert not ignore.excluded(path), path


@pytest.mark.parametrize("pattern,path,excluded", [
    ("**/*.pyc", "a.pyc", True), ("**/*.pyc", "a/b/c.pyc", True), ("build-*", "build-x/y", True),
    ("build-*", "scripts/build-x", False), ("tests", "tests/deploy/x.py", True), ("*.md", "docs/a.md", False),
])
def test_dockerignore_matcher(tmp_path, pattern, path, excluded):
    f = tmp_path / ".dockerignore"
    f.write_text(pattern + "\n")
    assert DockerIgnore(f).excluded(path) is excluded
    f.write_text(pattern + "\n!" + path + "\n")
    assert DockerIgnore(f).excluded(path) is False
