# Local stand-in for quay.io/coreos/etcd where no registry is reachable: Debian's etcd release
# (3.4.23 in bookworm; not 3.5.0-3.5.2, whose crash bug the compose file warns about), configured
# the same way, by ETCD_* variables. compose: ETCD_IMAGE=localhost/ocrmesh-etcd:bookworm.
#   docker build -f deploy/local-images/etcd.Dockerfile -t localhost/ocrmesh-etcd:bookworm \
#       --build-arg BASE_IMAGE=localhost/ocrmesh-base:bookworm deploy/local-images
ARG BASE_IMAGE=debian:bookworm-slim
FROM ${BASE_IMAGE}
ENV DEBIAN_FRONTEND=noninteractive
# The data directory belongs to the unprivileged user (65532, as in the Kubernetes StatefulSet);
# a new named volume takes its owner from the image.
RUN apt-get update \
    && apt-get install -y --no-install-recommends etcd-server etcd-client \
    && rm -rf /var/lib/apt/lists/* /var/lib/etcd \
    && mkdir -p /var/lib/etcd \
    && chown 65532:65532 /var/lib/etcd \
    && etcd --version
USER 65532:65532
EXPOSE 2379 2380
HEALTHCHECK --interval=10s --timeout=5s --retries=5 CMD ["etcdctl", "endpoint", "health"]
CMD ["etcd"]
