#!/bin/sh
# Like curlimages/curl's entrypoint: arguments that start with "-", or that name no command, go to curl.
set -e
if [ "${1#-}" != "$1" ] || [ -z "$(command -v "$1")" ]; then
  set -- curl "$@"
fi
exec "$@"
