# registry.k8s.io/pause stand-in: one static binary, the real image's user and entrypoint.
FROM scratch
COPY pause /pause
USER 65535:65535
ENTRYPOINT ["/pause"]
