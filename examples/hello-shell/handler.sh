#!/bin/sh
# An alcove function in shell: the request on stdin, the response on stdout,
# logs on stderr, exit 0 for success.
#
#   alcove fn deploy hello-sh --handler 'sh /fn/handler.sh' --code examples/hello-shell --env GREETING=hi
#   alcove fn invoke hello-sh --data 'Ada'
set -eu
name=$(cat)
if [ -z "$name" ]; then
    echo "no name in the request" >&2
    exit 2
fi
echo "greeting $name" >&2
printf '%s, %s\n' "${GREETING:-hello}" "$name"
