"""The operator hears when documents sit on a disk that looks temporary: on /healthz and on the editor page.

A PaaS dyno with no ``DATABASE_URL`` keeps SQLite in ``./data`` on a disk
that the next deploy wipes; ``collab serve`` warns at start, and every
editor page says it too, so the operator sees it before anyone loses work.
"""

from __future__ import annotations

import httpx

from test_browser import ServerProcess, browser, new_doc, pages  # noqa: F401  (browser and pages are fixtures)


def test_a_dyno_without_a_database_shows_the_notice_and_a_volume_silences_it(tmp_path, pages):
    dyno = ServerProcess("./data", env={"DYNO": "web.1"}, cwd=str(tmp_path)).start()
    volume = ServerProcess(str(tmp_path / "volume"), env={"DYNO": "web.1"}).start()
    try:
        health = httpx.get(f"{dyno.base_url}/healthz", timeout=5).json()
        assert health["status"] == "ok" and "Heroku or Dokku" in health["notice"] and "DATABASE_URL" in health["notice"]
        assert str(tmp_path) not in health["notice"]  # the page is public: no paths of the server's disk
        page = pages.open(f"{dyno.base_url}/d/{new_doc()}", name="Ops 🛠️")
        page.wait_for_selector("#operator-notice:not([hidden])")
        assert "may be lost" in page.inner_text("#operator-notice")

        assert "notice" not in httpx.get(f"{volume.base_url}/healthz", timeout=5).json()
        quiet = pages.open(f"{volume.base_url}/d/{new_doc()}", name="Ops 🛠️")
        quiet.wait_for_selector("#operator-notice[data-checked]", state="attached")  # the page asked the server
        assert quiet.is_hidden("#operator-notice")
    finally:
        dyno.stop()
        volume.stop()
