# The worker image: the wheel on a pinned Python base, run as a non-root user.
#   pip wheel --no-deps -w dist .   &&   docker build -f deploy/docker/worker.Dockerfile -t crm-erp-sync/worker:0.1.0 .
FROM python:3.11.11-slim-bookworm
RUN useradd --uid 10001 --no-create-home --shell /usr/sbin/nologin sync
COPY dist/crm_erp_sync-*.whl /tmp/
RUN pip install --no-cache-dir /tmp/crm_erp_sync-*.whl && rm /tmp/crm_erp_sync-*.whl
USER 10001
ENTRYPOINT ["crm-erp-sync"]
CMD ["--config", "/etc/crm-erp-sync/sync.yaml", "worker"]
