# Local stand-in for the postgres image where no registry is reachable: Debian's PostgreSQL 15 with
# an entrypoint that honours what compose uses of the official one (POSTGRES_USER, POSTGRES_DB,
# POSTGRES_PASSWORD; data in /var/lib/postgresql/data; pg_isready). compose:
# POSTGRES_IMAGE=localhost/ocrmesh-postgres:bookworm.
#   docker build -f deploy/local-images/postgres.Dockerfile -t localhost/ocrmesh-postgres:bookworm \
#       --build-arg BASE_IMAGE=localhost/ocrmesh-base:bookworm deploy/local-images
ARG BASE_IMAGE=debian:bookworm-slim
FROM ${BASE_IMAGE}
ENV DEBIAN_FRONTEND=noninteractive
# No cluster from the package's postinst: the entrypoint makes one in the volume on first start.
RUN mkdir -p /etc/postgresql-common/createcluster.d \
    && echo 'create_main_cluster = false' > /etc/postgresql-common/createcluster.d/no-main.conf \
    && apt-get update \
    && apt-get install -y --no-install-recommends postgresql-15 \
    && rm -rf /var/lib/apt/lists/* \
    && mkdir -p /var/lib/postgresql/data /var/run/postgresql \
    && chown -R postgres:postgres /var/lib/postgresql /var/run/postgresql \
    && chmod 0700 /var/lib/postgresql/data
COPY postgres-entrypoint.sh /usr/local/bin/postgres-entrypoint.sh
ENV PATH=/usr/lib/postgresql/15/bin:$PATH \
    PGDATA=/var/lib/postgresql/data
USER postgres
EXPOSE 5432
STOPSIGNAL SIGINT
HEALTHCHECK --interval=5s --timeout=5s --retries=10 CMD ["pg_isready"]
ENTRYPOINT ["/usr/local/bin/postgres-entrypoint.sh"]
CMD ["postgres"]
