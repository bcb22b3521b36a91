"""An alcove HTTP function in Python. The request: its method, path, query
and headers in CGI variables (REQUEST_METHOD, PATH_INFO, QUERY_STRING,
CONTENT_TYPE, HTTP_*), its body on stdin. The response on stdout: header
lines, an empty line, the body. Logs on stderr.

    alcove fn deploy hello-py --http --handler 'python3 /fn/main.py' --code examples/hello-python
    alcove fn invoke hello-py --data '{"name": "Ada"}'
    curl -H "Authorization: Bearer $TOKEN" 'localhost:8480/fn/hello-py?name=Ada'
"""
import json
import os
import sys
from urllib.parse import parse_qs

body = sys.stdin.read()
query = parse_qs(os.environ.get("QUERY_STRING", ""))
try:
    request = json.loads(body) if body.strip() else {}
    name = request.get("name") or query.get("name", ["world"])[0]
except (ValueError, AttributeError):
    sys.stdout.write("Status: 400\nContent-Type: text/plain\n\nsend a JSON object, such as {\"name\": \"Ada\"}\n")
    sys.exit(0)
print(f"greeting {name} (invocation {os.environ.get('ALCOVE_INVOCATION')})", file=sys.stderr)
sys.stdout.write("Status: 200\nContent-Type: application/json\n\n")
json.dump({"greeting": f"hello, {name}", "version": os.environ.get("ALCOVE_VERSION")}, sys.stdout)
