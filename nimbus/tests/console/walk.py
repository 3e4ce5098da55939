"""The web console in a real headless Chromium (Debian's), driven by Playwright.

Walks what a tenant does: sign in -> create a function in the editor -> edit its
code -> deploy -> invoke with a saved test event -> read the call's logs -> publish
two versions and route an alias with the weight slider. Then checks what a smaller
role is not offered, and that the key never reaches a URL or localStorage.

Run by nimbus/tests/console.rs with NIMBUS_URL, an owner key (NIMBUS_OWNER_KEY) and
an invoker key (NIMBUS_INVOKER_KEY); NIMBUS_SHOTS names a directory for screenshots.
"""

import json
import os
import re
import sys

from playwright.sync_api import expect, sync_playwright

URL = os.environ["NIMBUS_URL"]
OWNER = os.environ["NIMBUS_OWNER_KEY"]
INVOKER = os.environ["NIMBUS_INVOKER_KEY"]
ADMIN = os.environ["NIMBUS_ADMIN_KEY"]
SHOTS = os.environ.get("NIMBUS_SHOTS")
CHROMIUM = os.environ.get("NIMBUS_CHROMIUM", "/usr/bin/chromium")


def shot(page, name):
    if SHOTS:
        page.screenshot(path=os.path.join(SHOTS, f"{name}.png"), full_page=True)


def sign_in(page, key):
    page.goto(f"{URL}/console/")
    page.fill("#api-key", key)
    page.click("#sign-in")


def set_editor(page, text):
    """Replaces the CodeMirror document by typing, as a user would."""
    page.click("#editor .cm-content")
    page.keyboard.press("Control+A")
    page.keyboard.press("Delete")
    page.keyboard.insert_text(text)


def main():
    requests = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.on("request", lambda r: requests.append(r.url))
        page.on("pageerror", lambda e: sys.exit(f"page error: {e}"))

        # Sign in.
        page.goto(f"{URL}/console/")
        shot(page, "sign-in")
        sign_in(page, OWNER)
        expect(page.locator("#who")).to_contain_text("owner")
        expect(page.locator("h1")).to_have_text("Functions")

        # Create: name, runtime and the handler's code in the editor.
        page.click("#new-function")
        page.fill("#fn-name", "web")
        set_editor(
            page,
            "def handler(event, context):\n    print('hello from the console')\n    return {'v': 1, 'name': event.get('name')}\n",
        )
        shot(page, "create")
        page.click("#create")
        # After the task, the console opens the function's code.
        expect(page.locator("#tab-code .cm-content")).to_contain_text("hello from the console", timeout=30000)

        # Edit and deploy; the task's steps are shown as they run.
        set_editor(
            page,
            "def handler(event, context):\n    print('edited in the browser')\n    return {'v': 2, 'name': event.get('name')}\n",
        )
        page.click("#deploy")
        expect(page.locator("#deploy-result [data-task-state='Succeeded']")).to_be_visible(timeout=30000)
        expect(page.locator("#deploy-result .steps li").first).to_be_visible()
        shot(page, "code")

        # Invoke with a saved test event: result, cold start, and the call's logs.
        page.click("#tab-link-invoke")
        page.fill("#event", json.dumps({"name": "browser"}))
        page.click("#invoke")
        expect(page.locator("#invoke-output")).to_contain_text('"v": 2')
        expect(page.locator("#invoke-output")).to_contain_text('"browser"')
        expect(page.locator("#invoke-result")).to_contain_text("Cold start")
        expect(page.locator("#invoke-logs")).to_contain_text("edited in the browser", timeout=10000)
        expect(page.locator("#invoke-logs")).to_contain_text("REPORT")
        shot(page, "invoke")
        # The event was saved: it is there after a reload.
        page.reload()
        expect(page.locator("#event")).to_have_value(json.dumps({"name": "browser"}))

        # An asynchronous call, followed over the watch websocket.
        page.click("#invoke-async")
        expect(page.locator("#async-states")).to_contain_text("Succeeded", timeout=30000)

        # The logs page.
        page.click("#tab-link-logs")
        expect(page.locator("#log-lines")).to_contain_text("edited in the browser")
        shot(page, "logs")

        # Metrics: the two calls (sync and async) once the meter has shipped them
        # (every second): bars of invocations and the p50/p99 duration lines.
        page.click("#tab-link-metrics")
        summary = page.locator("#metrics-summary")
        for _ in range(40):
            if summary.count() and summary.inner_text().startswith("2 invocations"):
                break
            page.wait_for_timeout(500)
            page.click("#metrics-refresh")
        expect(summary).to_contain_text("2 invocations, 0 errors")
        expect(page.locator("#chart-invocations rect.ok")).not_to_have_count(0)
        expect(page.locator("#chart-duration path.p50")).to_have_attribute("d", re.compile(r"^M\d"))
        shot(page, "metrics")
        page.select_option("#metrics-range", "86400")
        expect(summary).to_contain_text("2 invocations")
        expect(summary).to_contain_text("5 min per bar")

        # Versions and an alias with a gray release set by the slider.
        page.click("#tab-link-versions")
        page.click("#publish")
        expect(page.locator("#tab-versions table").first).to_contain_text("1", timeout=30000)
        page.click("#tab-link-code")
        set_editor(page, "def handler(event, context):\n    return {'v': 3}\n")
        page.click("#deploy")
        expect(page.locator("#deploy-result [data-task-state='Succeeded']")).to_be_visible(timeout=30000)
        page.click("#tab-link-versions")
        page.click("#publish")
        expect(page.locator("#alias-extra option[value='2']")).to_have_count(1, timeout=30000)
        page.fill("#alias-name", "live")
        page.select_option("#alias-version", "1")
        page.select_option("#alias-extra", "2")
        page.locator("#alias-weight").fill("25")
        expect(page.locator("#alias-weight-label")).to_have_text("75 % → 1, 25 % → 2")
        shot(page, "aliases")
        page.click("#alias-save")
        aliases = page.locator("#tab-versions table").nth(1)
        expect(aliases).to_contain_text("live", timeout=10000)
        expect(aliases).to_contain_text("25 % → 2")

        # The function list shows it.
        page.goto(f"{URL}/console/#/functions")
        expect(page.locator("h1")).to_have_text("Functions")
        expect(page.locator("table")).to_contain_text("web")
        expect(page.locator("table")).to_contain_text("Active")
        shot(page, "functions")

        # Usage: a chart of requests per day and a row per function.
        page.goto(f"{URL}/console/#/usage")
        expect(page.locator("h1")).to_have_text("Usage")
        expect(page.locator("#usage-chart")).to_be_visible()
        expect(page.locator("table")).to_contain_text("web", timeout=10000)
        shot(page, "usage")

        # Keys page (owner).
        page.goto(f"{URL}/console/#/keys")
        expect(page.locator("h1")).to_have_text("API keys")
        shot(page, "keys")

        # The key lives in sessionStorage only, and never in a URL.
        assert page.evaluate("sessionStorage.getItem('nimbus.key')") == OWNER
        assert page.evaluate("JSON.stringify(localStorage)").find(OWNER) < 0
        assert not [u for u in requests if OWNER in u], "the key reached a URL"

        # An invoker is not offered what it may not do.
        page.click("#sign-out")
        sign_in(page, INVOKER)
        expect(page.locator("#who")).to_contain_text("invoker")
        expect(page.locator("table")).to_contain_text("web")
        assert page.locator("#new-function").count() == 0
        assert page.locator("nav a", has_text="API keys").count() == 0
        page.goto(f"{URL}/console/#/functions/web/code")
        expect(page.locator("#tab-code")).to_contain_text("not read or change its code")
        page.goto(f"{URL}/console/#/functions/web/versions")
        expect(page.locator("#tab-versions")).to_contain_text("Aliases")
        assert page.locator("#publish").count() == 0

        # An admin: tenants and their limits, then one tenant's functions.
        page.click("#sign-out")
        sign_in(page, ADMIN)
        expect(page.locator("#who")).to_contain_text("admin")
        expect(page.locator("h1")).to_have_text("Tenants")
        page.click("table tr.link:has-text('acme')")
        page.fill("#limit-max_functions", "321")
        page.click("#limits-save")
        expect(page.locator("table")).to_contain_text("321")
        shot(page, "tenants")
        page.click("table tr.link:has-text('acme') button")
        expect(page.locator("h1")).to_have_text("Functions")
        expect(page.locator("table")).to_contain_text("web")

        # A wrong key is refused with the API's message.
        page.click("#sign-out")
        sign_in(page, "nmb_bad_key")
        expect(page.locator(".error")).to_contain_text("401")
        browser.close()
    print("console walk: ok")


if __name__ == "__main__":
    main()
