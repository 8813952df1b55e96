# edgeloop-builder: buildah (Debian's package), the in-cluster builder of the serving image.
# It runs as a non-root user (1000): buildah builds rootless in a user namespace with chroot isolation
# and the vfs storage driver, so it needs neither root nor a daemon. Build with `make images`.
#   BASE_IMAGE  a Debian bookworm image (the python image qualifies; `make base-image` builds one offline)
ARG BASE_IMAGE=docker.io/library/python:3.11-slim-bookworm
FROM ${BASE_IMAGE}
RUN apt-get update -q \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends buildah uidmap ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --uid 1000 --user-group --create-home --shell /usr/sbin/nologin build \
    && echo "build:1001:64535" > /etc/subuid && echo "build:1001:64535" > /etc/subgid
ENV BUILDAH_ISOLATION=chroot STORAGE_DRIVER=vfs HOME=/home/build
USER 1000:1000
WORKDIR /home/build
ENTRYPOINT ["buildah"]
CMD ["--help"]
