# curlimages/curl stand-in: Debian minbase (the real one is Alpine) with curl and its CA bundle, the real
# image's user (curl_user, 100:101), entrypoint behaviour and default command.
FROM arc-imds-e2e/bookworm-minbase
RUN apt-get update \
    && apt-get install -y --no-install-recommends curl ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --gid 101 curl_group \
    && useradd --uid 100 --gid 101 --no-create-home --home-dir /home/curl_user --shell /bin/sh curl_user
COPY curl-entrypoint.sh /entrypoint.sh
USER curl_user
ENTRYPOINT ["/entrypoint.sh"]
CMD ["curl"]
