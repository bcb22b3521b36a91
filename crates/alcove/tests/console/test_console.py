"""The operator console (/ui/) driven in headless Chromium against a real daemon.

crates/alcove/tests/console.rs runs this: it starts `alcove serve`, deploys
the functions named below, and passes ALCOVE_SERVER, ALCOVE_TOKEN, ALCOVE_BIN
(the alcove binary, for a deploy made while the console watches) and
CONSOLE_SCREENSHOTS (where one PNG per view goes).

The cases share one browser and run in the order of their names. Each makes
the situation it checks happen through the API first, and confirms it there,
so that what it then looks for in the page is known to exist.
"""

import itertools
import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
import unittest
import urllib.error
import urllib.request
import uuid

from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException, TimeoutException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait

SERVER = os.environ["ALCOVE_SERVER"].rstrip("/")
TOKEN = os.environ["ALCOVE_TOKEN"]
ALCOVE_BIN = os.environ["ALCOVE_BIN"]
SCREENSHOTS = os.environ["CONSOLE_SCREENSHOTS"]
CONSOLE = SERVER + "/ui/"

# Deployed by console.rs, whose FUNCTIONS give their handlers.
HELLO = "console-hello"
HELLO_STDERR = "hello writes to stderr"
FAILING = "console-fails"  # exits 3 when its body is "fail", else succeeds
FAILING_STDERR = "console says boom"
HOSTILE = "console-hostile"
HOSTILE_STDERR = '<script>window.__pwned=1</script><img src=x onerror="window.__pwned=2">'
# Deployed here, while the functions page is open.
LIVE = "console-live"
BULK = "console-bulk"  # does nothing: invoked 10,000 times
BULK_INVOCATIONS = 10_000
PAGE = 50  # rows a page of invocations shows

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
# The longest the page may take to show what the API already has: its
# polls run every 2 s (the chart's every 5 s).
WAIT_S = 10
# Long enough for a view's first poll after it rendered, so that an error
# from polling shows up in the console log too.
SETTLE_S = 2.5

# Everything here is on loopback: a proxy from the environment must not be used.
_HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def api(method, path, body=None, token=TOKEN, content_type=None):
    """One request to the daemon: (status, headers, body bytes); an error
    status is an answer like any other."""
    request = urllib.request.Request(SERVER + path, data=body, method=method)
    if token is not None:
        request.add_header("Authorization", "Bearer " + token)
    if content_type is not None:
        request.add_header("Content-Type", content_type)
    try:
        with _HTTP.open(request, timeout=60) as answer:
            return answer.status, answer.headers, answer.read()
    except urllib.error.HTTPError as error:
        with error:
            return error.code, error.headers, error.read()


def api_json(method, path, body=None):
    """A request that must succeed; its JSON answer."""
    status, _, data = api(method, path, body)
    if not 200 <= status < 300:
        raise AssertionError(f"{method} {path} answered {status}: {data[:500]!r}")
    return json.loads(data)


def invoke(function, body=b""):
    """Invokes `function` synchronously: (HTTP status, its invocation's id)."""
    status, headers, data = api("POST", f"/v1/functions/{function}/invoke", body)
    invocation = headers.get("x-alcove-invocation")
    if not invocation:
        raise AssertionError(f"invoking {function} answered {status} with no invocation id: {data[:500]!r}")
    return status, invocation


def severe(entries):
    """The browser console log entries that are errors."""
    return [e for e in entries if e.get("level") == "SEVERE"]


class Console(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        for function in (HELLO, FAILING, HOSTILE, BULK):
            api_json("GET", f"/v1/functions/{function}")
        os.makedirs(SCREENSHOTS, exist_ok=True)
        cls.scratch = tempfile.mkdtemp(prefix="alcove-console-")
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for flag in (
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            "--no-proxy-server",
            "--window-size=1280,800",
            "--user-data-dir=" + os.path.join(cls.scratch, "profile"),
        ):
            options.add_argument(flag)
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        cls.driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
        cls.driver.set_page_load_timeout(30)
        cls.driver.set_script_timeout(30)

    @classmethod
    def tearDownClass(cls):
        cls.driver.quit()
        shutil.rmtree(cls.scratch, ignore_errors=True)

    def setUp(self):
        self.driver = type(self).driver
        # The token lives in the page's memory only: a page that was left or
        # reloaded asks for it again.
        if not self.driver.current_url.startswith(CONSOLE) or not self.shown("#header"):
            self.driver.get(CONSOLE)
            self.log_in(TOKEN)
            self.wait_shown(self.function_link(HELLO), "the functions table after logging in")
        # What went before (a refused token, a failed case) is not this case's to judge.
        self.driver.get_log("browser")

    # --- helpers -----------------------------------------------------------

    def shown(self, css):
        """The elements matching `css` that are rendered: a hidden view's are not."""
        return self.driver.execute_script(
            "return [...document.querySelectorAll(arguments[0])]"
            ".filter(e => e.getClientRects().length > 0)",
            css,
        )

    def wait_until(self, condition, what):
        """Waits up to WAIT_S for `condition()` to be truthy; returns it, or
        fails naming `what` and what the page says."""
        try:
            return WebDriverWait(self.driver, WAIT_S, poll_frequency=0.1).until(lambda _: condition())
        except TimeoutException:
            shown_error = self.driver.execute_script(
                "const e = document.getElementById('error'); return e ? e.textContent : null"
            )
            self.fail(
                f"not within {WAIT_S} s: {what}\n  at {self.driver.current_url}\n"
                f"  #error: {shown_error!r}\n  console: {self.driver.get_log('browser')}"
            )

    def wait_shown(self, css, what):
        return self.wait_until(lambda: self.shown(css), f"{what} ({css} shown)")

    def wait_gone(self, css, what):
        self.wait_until(lambda: not self.shown(css), f"{what} ({css} no longer shown)")

    def text_of(self, css):
        """The textContent of the first rendered element matching `css`, or None."""
        return self.driver.execute_script(
            "const e = [...document.querySelectorAll(arguments[0])]"
            ".find(e => e.getClientRects().length > 0);"
            "return e ? e.textContent : null",
            css,
        )

    def row_facts(self, css):
        """The first rendered row matching `css`, read in one step (a poll may
        replace it at any moment): its data-status, its cells' text and its
        whole text; or None."""
        return self.driver.execute_script(
            "const row = [...document.querySelectorAll(arguments[0])]"
            ".find(e => e.getClientRects().length > 0);"
            "return row ? {status: row.dataset.status ?? null,"
            " cells: [...row.cells].map(c => c.textContent), text: row.textContent} : null",
            css,
        )

    def wait_row(self, css, what):
        return self.wait_until(lambda: self.row_facts(css), f"{what} ({css} shown)")

    def click(self, css, what):
        """Clicks the rendered element matching `css`, finding it again if a
        poll re-rendered it between finding and clicking."""
        for _ in range(3):
            element = self.wait_shown(css, what)[0]
            try:
                element.click()
                return
            except StaleElementReferenceException:
                continue
        self.fail(f"{what}: {css} kept being replaced before it could be clicked")

    def open(self, route):
        """Goes to a view of the console by its hash route."""
        self.driver.get(CONSOLE + route)

    def stored_token(self):
        """Where the page could have put the token for other pages of this
        origin to find: any of the tab's or origin's storage, or a cookie."""
        kept = self.driver.execute_script(
            "const all = [];"
            "for (const s of [sessionStorage, localStorage])"
            "  for (let i = 0; i < s.length; i++) all.push(s.getItem(s.key(i)));"
            "return all"
        )
        kept += [c.get("value") for c in self.driver.get_cookies()]
        return [k for k in kept if k and TOKEN in k] or None

    def log_in(self, token):
        field = self.wait_shown("#login-token", "the login form's token field")[0]
        field.clear()
        field.send_keys(token)
        self.click("#login-submit", "the login button")

    def mark_document(self):
        """Marks the loaded document: a reload would lose the mark."""
        mark = uuid.uuid4().hex
        self.driver.execute_script("window.__consoleMark = arguments[0]", mark)
        return mark

    def assert_not_reloaded(self, mark):
        self.assertEqual(
            self.driver.execute_script("return window.__consoleMark"),
            mark,
            "the page was reloaded: it should have updated in place",
        )

    def assert_console_clean(self, where):
        errors = severe(self.driver.get_log("browser"))
        self.assertEqual(
            errors,
            [],
            f"the browser console has errors after {where}:\n  "
            + "\n  ".join(f"{e.get('source')}: {e.get('message')}" for e in errors),
        )

    def screenshot(self, name):
        path = os.path.join(SCREENSHOTS, name)
        self.assertTrue(self.driver.save_screenshot(path), f"could not save {path}")

    @staticmethod
    def function_link(name):
        return f'#functions-table tr.function-row a[href$="#/functions/{name}"]'

    @staticmethod
    def invocation_row(invocation):
        return f'#invocations-table tr.invocation-row[data-id="{invocation}"]'

    # --- cases -------------------------------------------------------------

    def test_1_login(self):
        self.driver.execute_script("sessionStorage.clear()")
        # A fresh load of the console's front page (cases run in any order and
        # may leave another view open), so nothing of the page's state keeps the token.
        self.driver.get("about:blank")
        self.driver.get(CONSOLE)
        self.wait_shown("#login-form", "the login form for a console with no token")
        self.assertFalse(self.shown("#functions-table"), "the functions table shows before logging in")

        self.log_in("not-" + TOKEN)
        self.wait_until(
            lambda: "The token was refused" in self.driver.execute_script("return document.body.innerText"),
            'the message "The token was refused" for a wrong token',
        )
        self.assertTrue(self.shown("#login-form"), "no login form after a refused token")
        self.assertIsNone(self.stored_token(), "a refused token is kept in storage")
        self.screenshot("login.png")
        # The refused request (401) is the one error expected here; that it
        # is seen shows the other cases' checks of this log can see errors.
        errors = severe(self.driver.get_log("browser"))
        refused = [e for e in errors if "401" in e.get("message", "")]
        self.assertTrue(refused, f"the refused request is not in the browser console log: {errors}")
        self.assertEqual([e for e in errors if e not in refused], [], "console errors besides the refused token's 401")

        self.log_in(TOKEN)
        self.wait_shown(self.function_link(HELLO), "the functions table after logging in")
        self.assertFalse(self.shown("#login-form"), "the login form still shows after logging in")
        # Public functions share this origin: nothing of theirs may find the
        # token in storage or cookies, and a reload asks for it again.
        self.assertIsNone(self.stored_token(), "the token was put where pages of this origin can read it")
        self.assertEqual(self.driver.get_cookies(), [], "the console must keep its token out of cookies")
        self.driver.refresh()
        self.wait_shown("#login-form", "the login form after a reload (the token is held in memory only)")
        self.log_in(TOKEN)
        self.wait_shown(self.function_link(HELLO), "the functions table after logging in again")

        self.click("#logout", "the logout button")
        self.wait_shown("#login-form", "the login form after logging out")
        self.assertIsNone(self.stored_token(), "logging out left the token in storage")
        self.assertFalse(self.shown("#functions-table"), "the functions table shows after logging out")

        self.log_in(TOKEN)
        self.wait_shown(self.function_link(HELLO), "the functions table after logging in again")
        time.sleep(SETTLE_S)
        self.assert_console_clean("logging in")

    def test_2_views_without_console_errors(self):
        _, invocation = invoke(HELLO, b"views")
        record = api_json("GET", f"/v1/invocations/{invocation}")
        self.assertIn(HELLO_STDERR, record["stderr"])
        views = [
            ("#/functions", self.function_link(HELLO)),
            (f"#/functions/{HELLO}", self.invocation_row(invocation)),
            (f"#/invocations/{invocation}", "#invocation-stderr"),
            ("#/sandboxes", "#sandboxes-table"),
            ("#/events", "#events-table"),
        ]
        for route, ready in views:
            self.open(route)
            self.wait_shown(ready, f"the view {route}")
            if route.startswith("#/invocations/"):
                self.wait_until(
                    lambda: HELLO_STDERR in (self.text_of("#invocation-stderr") or ""),
                    "the invocation's stderr",
                )
            time.sleep(SETTLE_S)
            self.assert_console_clean(f"opening {route}")
        # Leaving the events view ends its stream: that must not be an error either.
        self.open("#/functions")
        self.wait_shown(self.function_link(HELLO), "the functions view after the events view")
        time.sleep(SETTLE_S)
        self.assert_console_clean("leaving #/events")

    def test_3_deploy_and_invocation_appear_live(self):
        status, _, _ = api("GET", f"/v1/functions/{LIVE}")
        self.assertEqual(status, 404, f"{LIVE} exists before this case deploys it")
        self.open("#/functions")
        self.wait_shown(self.function_link(HELLO), "the functions table")
        mark = self.mark_document()

        code = os.path.join(self.scratch, LIVE)
        os.makedirs(code, exist_ok=True)
        with open(os.path.join(code, "handler.sh"), "w") as handler:
            handler.write('echo "live: $(cat)"\n')
        deployed = subprocess.run(
            [ALCOVE_BIN, "fn", "deploy", LIVE, "--handler", "sh /fn/handler.sh", "--code", code],
            env={**os.environ, "ALCOVE_SERVER": SERVER, "ALCOVE_TOKEN": TOKEN},
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=60,
        )
        self.assertEqual(deployed.returncode, 0, f"alcove fn deploy {LIVE}: {deployed.stderr}{deployed.stdout}")
        api_json("GET", f"/v1/functions/{LIVE}")

        self.wait_shown(self.function_link(LIVE), f"the new function {LIVE}'s row")
        self.assert_not_reloaded(mark)
        self.screenshot("functions.png")

        self.click(self.function_link(LIVE), f"the link to {LIVE}'s page")
        self.wait_shown("#invocations-table", f"{LIVE}'s invocations table")
        mark = self.mark_document()
        status, invocation = invoke(LIVE, b"ping")
        self.assertEqual(status, 200, f"invoking {LIVE}")
        record = api_json("GET", f"/v1/invocations/{invocation}")
        row = self.wait_row(self.invocation_row(invocation), "the new invocation's row")
        self.assertEqual(row["status"], record["status"])
        self.assert_not_reloaded(mark)
        self.assert_console_clean(f"watching {LIVE} appear")

    def test_4_failed_invocation_shows_its_stderr(self):
        status, failed = invoke(FAILING, b"fail")
        self.assertEqual(status, 502, "a handler that exits 3 failed")
        record = api_json("GET", f"/v1/invocations/{failed}")
        self.assertEqual(record["exit_code"], 3, record)
        self.assertIn(FAILING_STDERR, record["stderr"])
        status, succeeded = invoke(FAILING, b"pass")
        self.assertEqual(status, 200, f"{FAILING} with any body but 'fail' succeeds")
        # The daemon's filters, which the page's select uses.
        for wanted, present, absent in (("failed", failed, succeeded), ("ok", succeeded, failed)):
            listed = [r["id"] for r in api_json("GET", f"/v1/functions/{FAILING}/logs?limit=50&status={wanted}")["invocations"]]
            self.assertIn(present, listed, f"status={wanted}")
            self.assertNotIn(absent, listed, f"status={wanted}")

        self.open(f"#/functions/{FAILING}")
        failed_row = self.invocation_row(failed)
        succeeded_row = self.invocation_row(succeeded)
        row = self.wait_row(failed_row, "the failed invocation's row")
        self.assertEqual(row["status"], record["status"])
        cells = row["cells"]
        self.assertGreater(len(cells), 3, f"the row has too few columns: {cells}")
        self.assertIn("3", cells[3], f"the exit code column of the failed invocation: {cells}")

        # Unfiltered, both show: each filter must then show one and hide the other.
        self.wait_shown(succeeded_row, "the succeeded invocation's row")
        for wanted, present, absent in (("ok", succeeded_row, failed_row), ("failed", failed_row, succeeded_row)):
            Select(self.wait_shown("#status-filter", "the status filter")[0]).select_by_value(wanted)
            self.wait_until(
                lambda: self.shown(present) and not self.shown(absent),
                f"the filter {wanted} to show {present} and not {absent}",
            )

        self.open(f"#/invocations/{failed}")
        self.wait_until(
            lambda: FAILING_STDERR in (self.text_of("#invocation-stderr") or ""),
            "the failed invocation's stderr in #invocation-stderr",
        )
        # The screenshot is of the stderr, below the record's fields.
        self.driver.execute_script(
            "document.getElementById('invocation-stderr').scrollIntoView({block: 'center'})"
        )
        self.screenshot("invocation.png")
        self.assert_console_clean("a failed invocation")

    def test_5_hostile_output_is_shown_as_text(self):
        _, invocation = invoke(HOSTILE)
        record = api_json("GET", f"/v1/invocations/{invocation}")
        self.assertIn(HOSTILE_STDERR, record["stderr"])

        self.open(f"#/invocations/{invocation}")
        self.wait_until(
            lambda: HOSTILE_STDERR in (self.text_of("#invocation-stderr") or ""),
            "the hostile stderr, as text, in #invocation-stderr",
        )
        # An injected image's onerror would run once its load had failed.
        time.sleep(1)
        self.assertIsNone(self.driver.execute_script("return window.__pwned"), "the function's output ran as script")
        self.assertEqual(self.driver.find_elements(By.CSS_SELECTOR, "#invocation-stderr img"), [])
        self.assertEqual(self.driver.find_elements(By.CSS_SELECTOR, "#invocation-stderr script"), [])
        self.assertEqual(self.driver.find_elements(By.CSS_SELECTOR, 'img[src="x"]'), [])
        self.assert_console_clean("an invocation with hostile stderr")

    def test_6_chart_has_points(self):
        for _ in range(5):
            status, _ = invoke(HELLO, b"chart")
            self.assertEqual(status, 200, f"invoking {HELLO}")
        stats = api_json("GET", f"/v1/functions/{HELLO}/stats")
        self.assertGreaterEqual(sum(b["invocations"] for b in stats["buckets"]), 5, stats)

        self.open(f"#/functions/{HELLO}")
        self.wait_shown("#stats-rate", "the invocation rate chart")
        self.wait_shown("#stats-duration", "the duration chart")
        points = self.wait_shown("#stats svg .point", "points on the charts")
        self.assertGreater(len(points), 0)
        titles = self.driver.execute_script(
            "return [...document.querySelectorAll('#stats svg .point')].map(p => p.querySelector('title')?.textContent ?? '')"
        )
        self.assertTrue(all(titles), f"every point needs a <title> giving its values: {titles}")
        self.screenshot("function.png")
        self.assert_console_clean("the charts")

    def test_7_kill_button_ends_a_sandbox(self):
        status, _, data = api("POST", "/v1/sandboxes", b"{}", content_type="application/json")
        self.assertEqual(status, 201, f"creating a sandbox: {data[:500]!r}")
        sandbox = json.loads(data)["id"]
        self.addCleanup(api, "DELETE", f"/v1/sandboxes/{sandbox}")
        self.assertEqual(api_json("GET", f"/v1/sandboxes/{sandbox}")["state"], "running")

        self.open("#/sandboxes")
        row = f'#sandboxes-table tr.sandbox-row[data-id="{sandbox}"]'
        self.wait_shown(row, "the new sandbox's row")
        self.screenshot("sandboxes.png")
        self.click(row + " button.kill", "the sandbox's Kill button")
        self.click(row + " button.confirm-kill", "the sandbox's confirm button")

        def gone():
            status, _, _ = api("GET", f"/v1/sandboxes/{sandbox}")
            listed = [s["id"] for s in api_json("GET", "/v1/sandboxes")["sandboxes"]]
            return status == 404 or sandbox not in listed

        self.wait_until(gone, f"the daemon no longer has sandbox {sandbox}")
        self.wait_gone(row, "the killed sandbox's row")
        self.assert_console_clean("killing a sandbox")

    def test_8_events_stream_live(self):
        self.open("#/events")
        self.wait_shown("#events-table", "the events table")
        mark = self.mark_document()
        # The stream may still be connecting when the first invocation ends;
        # its events are then not sent: invoke again until one is shown.
        found = None
        for _ in range(5):
            _, invocation = invoke(HELLO, b"events")
            row = f'#events-table tr.event-row:has(a[href$="#/invocations/{invocation}"])'
            deadline = time.monotonic() + 3
            while time.monotonic() < deadline and not found:
                found = self.row_facts(row)
                time.sleep(0.1)
            if found:
                break
        self.assertTrue(found, f"no event row for {HELLO}'s invocations appeared: console {self.driver.get_log('browser')}")
        self.assertIn(HELLO, found["text"])
        self.assert_not_reloaded(mark)
        self.screenshot("events.png")
        self.assert_console_clean("the events stream")

    def test_9_security_headers(self):
        status, headers, page = api("GET", "/ui/", token=None)
        self.assertEqual(status, 200, "the console's page must load without a token")
        self.assertIn(b"/ui/app.js", page)
        policy = headers.get("Content-Security-Policy")
        self.assertIsNotNone(policy, "/ui/ has no Content-Security-Policy")
        self.assertIn("script-src 'self'", policy)
        self.assertNotIn("unsafe-inline", policy)
        self.assertNotIn("unsafe-eval", policy)
        for asset in ("/ui/", "/ui/app.js", "/ui/app.css"):
            status, headers, _ = api("GET", asset, token=None)
            self.assertEqual(status, 200, f"{asset} must load without a token")
            self.assertEqual(headers.get("X-Content-Type-Options"), "nosniff", asset)
        status, _, _ = api("GET", "/v1/functions", token=None)
        self.assertEqual(status, 401, "/v1/functions without a token")
        status, _, _ = api("GET", "/v1/functions", token="not-" + TOKEN)
        self.assertEqual(status, 401, "/v1/functions with a wrong token")

    def test_10_ten_thousand_invocations_page_and_a_busy_stream_stays_bounded(self):
        # The events view stays open while 8 clients invoke as fast as the
        # daemon answers: its table must stay bounded and the page answering.
        self.open("#/events")
        self.wait_shown("#events-table", "the events table")
        issued = itertools.count()
        failures = []

        def client():
            while next(issued) < BULK_INVOCATIONS:
                status, _, data = api("POST", f"/v1/functions/{BULK}/invoke", b"")
                if status != 200:
                    failures.append((status, data[:200]))
                    return

        clients = [threading.Thread(target=client) for _ in range(8)]
        for c in clients:
            c.start()
        most_rows = 0
        while any(c.is_alive() for c in clients):
            # Each call is answered only between the page's own tasks: a page
            # frozen by the stream would fail it (the driver's own timeout).
            rows = self.driver.execute_script(
                "return document.querySelectorAll('#events-table tr.event-row').length"
            )
            most_rows = max(most_rows, rows)
            time.sleep(0.5)
        for c in clients:
            c.join()
        self.assertEqual(failures, [], "invocations failed under load")
        self.assertGreater(most_rows, 0, "the busy stream showed no event")
        self.assertLessEqual(most_rows, 500, "the events table outgrew its cap")
        self.assert_console_clean("a busy event stream")

        stats = api_json("GET", f"/v1/functions/{BULK}/stats")
        self.assertEqual(sum(b["invocations"] for b in stats["buckets"]), BULK_INVOCATIONS)
        newest = api_json("GET", f"/v1/functions/{BULK}/logs?limit=1")["invocations"][0]["id"]

        # Paged, 50 at a time, each page new rows only, older and back again.
        self.open(f"#/functions/{BULK}")
        self.wait_shown(self.invocation_row(newest), "the newest of 10,000 invocations")
        ids_js = (
            "return [...document.querySelectorAll('#invocations-table tr.invocation-row')]"
            ".map(r => r.dataset.id)"
        )
        seen = set()
        for page in range(3):
            ids = self.driver.execute_script(ids_js)
            self.assertEqual(len(ids), PAGE, f"page {page + 1} shows {len(ids)} rows")
            self.assertFalse(seen & set(ids), f"page {page + 1} repeats rows")
            seen |= set(ids)
            self.click("#older", "the older page button")
            self.wait_until(
                lambda: not set(self.driver.execute_script(ids_js)) & seen,
                f"the page after page {page + 1}",
            )
        self.click("#newer", "the newest page button")
        self.wait_shown(self.invocation_row(newest), "the first page again")
        self.assert_console_clean("paging 10,000 invocations")


if __name__ == "__main__":
    unittest.main()
