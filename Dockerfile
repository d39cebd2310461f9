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

# ---- 1. build: type-check and compile src/, then bundle the program -------------------------------------------
FROM node:${NODE_VERSION}-slim AS build
WORKDIR /src
COPY package.json package-lock.json ./
# --ignore-scripts: package.json's "prepare" script builds, which cannot work before src/ is copied; we build
# explicitly below (no dependency needs an install script).
RUN npm ci --ignore-scripts --no-audit --no-fund
COPY tsconfig.json tsconfig.build.json ./
COPY scripts/bundle.mjs ./scripts/
COPY src ./src
RUN npm run build

# What ships is the bundle (scripts/bundle.mjs): dist/cli.js and dist/chunks/ hold every line that runs, the
# dependencies' included, so the image has no node_modules. tsc's one-file-per-module output, also in dist/, is
# for the tests. No source maps: nothing runs with --enable-source-maps.
RUN mkdir -p out/dist && cp -r dist/cli.js dist/chunks dist/THIRD-PARTY-LICENSES.txt out/dist/ && find out -name '*.map' -delete

# ---- 2. runtime ------------------------------------------------------------------------------------------------
FROM node:${NODE_VERSION}-slim AS runtime

# The runtime carries only what runs: the base's npm, npx, corepack (and yarn, where a base has it) go. (Their
# files stay in the base's layer, shared with every other image on that base; what this Dockerfile adds is
# measured in docs/performance.md.)
# iproute2 for `netns-setup`; nothing else; apt's and dpkg's logs and backups go with the lists. Then the two mount points, owned by the runtime user, so that a
# fresh named volume (which Docker seeds from the image, ownership included) starts writable by it:
#   /run/arc-imds               the relay's socket directory, shared with the sidecars (mode 0755: anyone may
#                               traverse it; the socket's own mode and group decide who may connect)
#   /var/opt/azcmagent/tokens   HIMDS key files: bound read-only from the host in production; written by the
#                               emulator in development
RUN rm -rf /usr/local/lib/node_modules/npm /usr/local/lib/node_modules/corepack /usr/local/bin/npm /usr/local/bin/npx \
       /usr/local/bin/corepack /usr/local/bin/yarn /usr/local/bin/yarnpkg /opt/yarn-* /usr/local/include/node \
       /usr/local/share/doc/node /usr/local/share/man/man1/node.1 \
    && apt-get update \
    && apt-get install -y --no-install-recommends iproute2 \
    && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /var/cache/apt/archives/*.deb /var/log/apt /var/log/dpkg.log \
       /var/cache/debconf/*-old /var/lib/dpkg/*-old \
    && mkdir -p /run/arc-imds /var/opt/azcmagent/tokens \
    && chown 65532:65532 /run/arc-imds /var/opt/azcmagent/tokens \
    && chmod 0755 /run/arc-imds \
    && chmod 0750 /var/opt/azcmagent/tokens

WORKDIR /app
ENV NODE_ENV=production
COPY --from=build /src/out/dist ./dist
# Its "type": "module" makes dist/'s .js files ES modules (the version is built into the bundle).
COPY package.json LICENSE ./

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

# src/node-flags.ts's RUNTIME_OPTIONS (tests check they agree): V8 favours memory over speed (a small fixed young
# generation, where Node 24 would grow it to 64 MB semi-spaces under a burst and keep them, and an old generation
# collected and shrunk sooner), and undici's WebAssembly parser stays on baseline code (an optimised recompile
# keeps ~10 MB for good). On the command line here, node starts with them and the entry point has nothing to
# re-exec (the HEALTHCHECK's `probe` never needs them). docs/performance.md has the measurements.
ENTRYPOINT ["node", "--max-semi-space-size=1", "--min-semi-space-size=1", "--heap-growing-percent=50", "--no-maglev", "--liftoff-only", "/app/dist/cli.js"]
CMD ["serve"]
