# Seeds the ccache mount of deploy/Dockerfile's build stage (the same BuildKit cache mount: same
# target, no id) with the host's ccache, where scripts/test.sh compiled the same sources earlier in
# CI. deploy/ci/image_test.py runs it once, on a fresh machine, before the image's build:
#   docker build --no-cache -f deploy/ci/ccache_seed.Dockerfile "$CCACHE_DIR"
# Copies the cache's folders (not its configuration), without replacing what the mount has.
ARG BASE=stemserve-base:debian12
FROM ${BASE}
RUN --mount=type=cache,target=/root/.cache/ccache --mount=type=bind,target=/seed \
    cp -a -n /seed/[0-9a-f] /root/.cache/ccache/ && du -sm /root/.cache/ccache
