#!/bin/sh
# A streaming HTTP function: alcove sends each line to the client as it is
# written (chunked), not when the handler ends.
#
#   alcove fn deploy countdown --http --handler 'sh /fn/handler.sh' --code examples/countdown-shell
#   curl -N -H "Authorization: Bearer $TOKEN" 'localhost:8480/fn/countdown?5'
set -eu
n=${QUERY_STRING:-3}
case $n in ''|*[!0-9]*) n=3 ;; esac
[ "$n" -le 30 ] || n=30
printf 'Status: 200\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n'
while [ "$n" -gt 0 ]; do
    echo "$n..."
    n=$((n - 1))
    sleep 1
done
echo "liftoff"
