# The web console (docs/console.md) is built with the dev dependencies, in a stage of its own.
FROM node:20-bookworm-slim AS console
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci --ignore-scripts
COPY web ./web
RUN npm run console:build

# One image for both the worker and the API; the compose file picks the command.
FROM node:20-bookworm-slim
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci --omit=dev --ignore-scripts
COPY . .
COPY --from=console /app/web/dist ./web/dist
# Prebuilt workflow bundle: workers start without running webpack. Build with
# --build-arg KEEL_TRACING=1 for workers that export OpenTelemetry traces.
ARG KEEL_TRACING=
RUN npx tsx scripts/bundle-workflows.ts ${KEEL_TRACING:+--tracing} > /app/.workflow-bundle-path
ENV NODE_ENV=production
CMD ["npx", "tsx", "api/main.ts"]
