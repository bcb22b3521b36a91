"""An alcove function in Python: the request on stdin, the response on
stdout, logs on stderr, exit 0 for success.

    alcove fn deploy hello-py --handler 'python3 /fn/main.py' --code examples/hello-python
    alcove fn invoke hello-py --data '{"name": "Ada"}'
"""
import json
import os
import sys

request = json.load(sys.stdin) if not sys.stdin.isatty() else {}
name = request.get("name", "world")
print(f"greeting {name} (invocation {os.environ.get('ALCOVE_INVOCATION')})", file=sys.stderr)
json.dump({"greeting": f"hello, {name}", "version": os.environ.get("ALCOVE_VERSION")}, sys.stdout)
