# arc-imds-proxy: ONE image for every role, chosen by the command (CMD, or `command:`/`args:`):
#   serve ...          the relay (host network namespace) or the sidecar (the application's network namespace)
#   netns-setup        one-shot: lo up + 169.254.169.254/32 on it (the only role that needs NET_ADMIN)
#   emulate-himds ...  the HIMDS emulator, for development on any machine
#   probe              the health check (HEALTHCHECK below; compose healthchecks)
#
#   docker build -t arc-imds-proxy .
#
# Runtime: Node 24 LTS on Debian slim, because `netns-setup` runs `ip` (iproute2), which distroless images do
# not have. CI runs the whole test suite on this exact Node version as well (.ci/run installs the same
# version; test/deploy/image.test.ts checks that the two agree).
#
# Read-only root filesystem: the process writes only its unix socket (in /run/arc-imds, a volume) and, as the
# emulator, key files (in /var/opt/azcmagent/tokens, a volume). Run with --read-only / readOnlyRootFilesystem.
# `demo` is the exception: it needs a writable /tmp (a tmpfs), and it is not meant for containers anyway.
ARG NODE_VERSION=24.21.0

# ---- 1. build: compile src/ to dist/ with the locked toolchain -------------------------------------------
FROM node:${NODE_VERSION}-slim AS build
WORKDIR /src
COPY package.json package-lock.json ./
# --ignore-scripts: package.json's "prepare" script builds, which cannot work before src/ is copied; we build
# explicitly below (no dependency needs an install script).
RUN npm ci --ignore-scripts --no-audit --no-fund
COPY tsconfig.json tsconfig.build.json ./
COPY src ./src
RUN npm run build

# ---- 2. deps: production dependencies only ------------------------------------------------------------------
FROM node:${NODE_VERSION}-slim AS deps
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci --omit=dev --ignore-scripts --no-audit --no-fund && npm cache clean --force

# ---- 3. runtime ------------------------------------------------------------------------------------------------
FROM node:${NODE_VERSION}-slim AS runtime

# iproute2 for `netns-setup`; nothing else. Then the two mount points, owned by the runtime user, so that a
# fresh named volume (which Docker seeds from the image, ownership included) starts writable by it:
#   /run/arc-imds               the relay's socket directory, shared with the sidecars (mode 0755: anyone may
#                               traverse it; the socket's own mode and group decide who may connect)
#   /var/opt/azcmagent/tokens   HIMDS key files: bound read-only from the host in production; written by the
#                               emulator in development
RUN apt-get update \
    && apt-get install -y --no-install-recommends iproute2 \
    && rm -rf /var/lib/apt/lists/* \
    && mkdir -p /run/arc-imds /var/opt/azcmagent/tokens \
    && chown 65532:65532 /run/arc-imds /var/opt/azcmagent/tokens \
    && chmod 0755 /run/arc-imds \
    && chmod 0750 /var/opt/azcmagent/tokens

WORKDIR /app
ENV NODE_ENV=production
COPY --from=deps /app/node_modules ./node_modules
COPY --from=build /src/dist ./dist
# dist/version.js reads ../package.json (the version in --version and arc_imds_build_info).
COPY package.json ./

LABEL org.opencontainers.image.title="arc-imds-proxy" \
      org.opencontainers.image.description="Azure VM IMDS managed-identity endpoint for containers on Azure Arc-enabled machines" \
      org.opencontainers.image.licenses="MIT"

# Numeric, so that Kubernetes can enforce runAsNonRoot. No capabilities are needed to run as this user: the
# sidecar binds port 80 thanks to net.ipv4.ip_unprivileged_port_start=0 in its network namespace (Docker sets
# it by default; Kubernetes: a pod sysctl). netns-setup and the Kubernetes relay override the user (see
# deploy/README.md).
USER 65532:65532

# Asks the admin listener's /readyz at its default address (127.0.0.1:9464): "a token can be minted now".
# Roles without an admin listener (netns-setup, emulate-himds) disable or replace it (see deploy/compose).
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
    CMD ["node", "/app/dist/cli.js", "probe"]

# A fixed 2 MB young generation (V8 semi-space). By default it grows to 16 MB under a burst of connections and
# stays there: 86 instead of 74 MB with 1,000 connections open. Fixed rather than only capped: a capped one
# that V8 shrinks and regrows made cached-hit throughput flip between two levels ~20% apart from one run to
# the next. README "Memory" has the measurements; npm start and npm run bench use these same options.
ENTRYPOINT ["node", "--max-semi-space-size=2", "--min-semi-space-size=2", "/app/dist/cli.js"]
CMD ["serve"]
