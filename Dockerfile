# One image for both the worker and the API; the compose file picks the command.
FROM node:20-bookworm-slim
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci --omit=dev --ignore-scripts
COPY . .
# Prebuilt workflow bundle: workers start without running webpack. Build with
# --build-arg KEEL_TRACING=1 for workers that export OpenTelemetry traces.
ARG KEEL_TRACING=
RUN npx tsx scripts/bundle-workflows.ts ${KEEL_TRACING:+--tracing} > /app/.workflow-bundle-path
ENV NODE_ENV=production
CMD ["npx", "tsx", "api/main.ts"]
