# PostgreSQL from Debian packages on the build-base.sh base, for hosts that cannot pull the
# official `postgres` image. It honours the same interface that docker/compose.yaml uses:
# POSTGRES_USER, POSTGRES_PASSWORD, POSTGRES_DB, data in /var/lib/postgresql/data, and
# /docker-entrypoint-initdb.d/*.sql|*.sh run once on a new data directory.
#   docker build -f docker/postgres.Dockerfile -t robust-ft-postgres docker
#   POSTGRES_IMAGE=robust-ft-postgres make compose-up
ARG BASE=robust-ft-base:bookworm
FROM ${BASE}
RUN set -eu; \
    mkdir -p /etc/postgresql-common; \
    echo "create_main_cluster = false" >/etc/postgresql-common/createcluster.conf; \
    apt-get update; \
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends postgresql; \
    rm -rf /var/lib/apt/lists/*; \
    ln -s /usr/lib/postgresql/*/bin/* /usr/local/bin/; \
    mkdir -p /var/lib/postgresql/data /docker-entrypoint-initdb.d /var/run/postgresql; \
    chown -R postgres:postgres /var/lib/postgresql /var/run/postgresql
COPY postgres-entrypoint.sh /usr/local/bin/postgres-entrypoint.sh
ENV PGDATA=/var/lib/postgresql/data
USER postgres
EXPOSE 5432
STOPSIGNAL SIGINT
ENTRYPOINT ["tini", "--", "/usr/local/bin/postgres-entrypoint.sh"]
CMD ["postgres"]
