# Container mode: the Functions app run by `durable-fx serve` (no Functions
# host). HTTP triggers on :8080; the durable and event-source queue triggers
# are polled by serve itself, and KEDA (infra/modules/containerapp.bicep)
# scales replicas on those queues, down to zero.
FROM python:3.12-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# Dependencies first, so code changes reuse this layer.
COPY requirements.txt ./
RUN pip install -r requirements.txt

# durable_fx with the functions extra provides the `durable-fx` command.
COPY pyproject.toml README.md ./
COPY durable_fx ./durable_fx
RUN pip install '.[functions]'

# The app: host.json (queue rules, route prefix), function_app.py and its package.
COPY . .

# No root at run time. On the Azure store serve writes nothing to disk; run
# without Azure settings it keeps the embedded SQLite store in /app/.durable_fx.
RUN useradd --create-home --uid 10001 app && chown app /app
USER app

EXPOSE 8080

# The Container App sets the identity-based AzureWebJobsStorage__* settings, so
# serve opens the Azure store and the app's queues; JSON logs suit Log Analytics.
CMD ["durable-fx", "serve", "function_app:app", "--host", "0.0.0.0", "--port", "8080", "--log-format", "json"]
