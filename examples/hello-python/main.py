"""An alcove HTTP function in Python. The request: its method, path, query
and headers in CGI variables (REQUEST_METHOD, PATH_INFO, QUERY_STRING,
CONTENT_TYPE, HTTP_*), its body on stdin. The response on stdout: header
lines (Status, Content-Type, any others), an empty line, the body. Logs on
stderr.

    alcove fn deploy hello --http --handler 'python3 /fn/main.py' --code examples/hello-python
    alcove fn invoke hello --data '{"name": "Ada"}'
    curl -si -H "Authorization: Bearer $TOKEN" 'localhost:8480/fn/hello/greet?name=Ada'
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
    sys.stdout.write('Status: 400 Bad Request\nContent-Type: text/plain\n\nsend a JSON object, such as {"name": "Ada"}\n')
    sys.exit(0)
print(f"greeting {name} (invocation {os.environ.get('ALCOVE_INVOCATION')})", file=sys.stderr)
sys.stdout.write("Status: 201 Created\nContent-Type: application/json\nX-Greeting: hello\n\n")
json.dump({
    "greeting": f"hello, {name}",
    "method": os.environ.get("REQUEST_METHOD"),
    "path": os.environ.get("PATH_INFO"),
    "query": os.environ.get("QUERY_STRING"),
    "version": os.environ.get("ALCOVE_VERSION"),
}, sys.stdout)
print()
