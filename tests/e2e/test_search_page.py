"""The search page in a real browser, and the routes it reads over real HTTP.

Two corpora go through the real embed and index stages (Ray Data, FAISS, a calibration table, MLflow in a temp
dir): 300 Fashion-MNIST images embedded by a small CNN, and 300 short texts embedded by a one-layer BERT (both with
random weights, saved as model directories: what is tested is the service, not the model). Ray Serve on 127.0.0.1
serves each with an encoder, the images behind an API key at /, the texts open at /text/. The system's chromium,
driven by Selenium through the system's chromedriver (apt packages chromium and chromium-driver, installed by
`setup.sh --test`; nothing is downloaded: Selenium Manager is skipped and told to stay offline), logs in to the
page with the key (HTTP Basic, as a person does at the browser's prompt), submits an image and a text, and the ids
it shows must be exactly the ids POST /search returns for the same query and plan. MRL_SCREENSHOT=<path.png> also
saves the page after the image query there.
"""

import base64
import io
import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image

from mrl.artifacts.manifest import read_manifest

from conftest import free_port, tiny_text_model

pytestmark = pytest.mark.slow
KEY = "page-test-key-not-a-secret"
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
ROWS = 300


def embed_and_index(out: Path, name: str, model_dir: Path, data: dict) -> str:
    """The real embed stage (train and test splits) and index stage (with its calibration table) over `data`;
    returns the index directory."""
    from mrl.config import EmbedJobConfig, IndexJobConfig
    from mrl.configio import from_dict
    from mrl.stages.embed import run as embed
    from mrl.stages.index import run as index

    common = {"output_dir": str(out), "mlflow": {"experiment": "page"}}
    emb = embed(from_dict(EmbedJobConfig, {**common, "model_uri": str(model_dir), "run_name": name, "data": data,
                                           "embed": {"num_actors": 1, "batch_size": 100, "rows_per_file": 150},
                                           "ray": {"num_cpus": 8}}))
    return index(from_dict(IndexJobConfig, {**common, "embeddings": emb["path"],
                                            "index": {"calibration_queries": 100}}))["path"]


def image_corpus(out: Path) -> str:
    import torch

    from mrl.artifacts.model_files import save_model_dir
    from mrl.core.models import build_model

    torch.manual_seed(0)
    model = build_model({"encoder": "cnn", "dim": 32, "nesting": {"schedule": "list", "sizes": [8, 16, 32]},
                         "backbone": {"channels": [4, 8]}}).eval()
    return embed_and_index(out, "images", save_model_dir(model, out / "image-model"),
                           {"source": "fashion_mnist", "train_limit": ROWS, "test_limit": 100})


def text_corpus(out: Path) -> str:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from mrl.artifacts.model_files import save_model_dir

    things = ["cat", "dog", "boat", "river", "stone", "tree", "cloud", "house", "bird", "fish"]
    places = ["the hill", "a lake", "the town", "a field", "the sea", "a road"]
    docs = [f"a {a} and a {b} near {p}" for a in things for b in things for p in places if a != b][:ROWS + 100]
    for split, rows in (("train", range(ROWS)), ("test", range(ROWS, ROWS + 100))):
        (out / "text" / split).mkdir(parents=True)
        pq.write_table(pa.table({"id": [7 * i for i in rows], "label": [i % 5 for i in rows],
                                 "query": [docs[i].split(" near ")[0] for i in rows], "document": [docs[i] for i in rows]}),
                       out / "text" / split / "part-0.parquet")
    model = tiny_text_model(docs, dim=16)
    return embed_and_index(out, "texts", save_model_dir(model, out / "text-model"),
                           {"source": "text_parquet", "path": str(out / "text")})


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    import ray
    from ray import serve

    from mrl.config import ServeConfig
    from mrl.retrieval.modes import SearchSettings
    from mrl.service.app import build_app

    out = tmp_path_factory.mktemp("search-page")
    images, texts = image_corpus(out), text_corpus(out)
    (out / "key").write_text(KEY + "\n")
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    tracking = f"sqlite:///{out}/mlflow.db"
    serve.run(build_app(images, ServeConfig(port=port, api_key_file=str(out / "key")), tracking), name="images",
              route_prefix="/", blocking=False)
    serve.run(build_app(texts, ServeConfig(port=port, search=SearchSettings(shortlist_size=4)), tracking), name="texts",
              route_prefix="/text", blocking=False)
    yield {"url": f"http://127.0.0.1:{port}", "images": images, "texts": texts, "out": out}
    serve.shutdown()
    ray.shutdown()


@pytest.fixture(scope="module")
def browser(served):
    """Headless chromium through the system's chromedriver; Selenium Manager must not run (it would download)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    if not (Path(CHROMIUM).is_file() and Path(CHROMEDRIVER).is_file()):
        pytest.fail(f"{CHROMIUM} and {CHROMEDRIVER} are needed: apt-get install -y chromium chromium-driver "
                    "(./setup.sh --test installs them)")
    os.environ["SE_OFFLINE"] = "true"  # should Selenium Manager run anyway, it may not download anything
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1400,1000", "--user-data-dir=" + str(served["out"] / "chromium-profile")):
        options.add_argument(arg)
    finder_log = _Records()
    logger = logging.getLogger("selenium.webdriver.common.driver_finder")
    logger.addHandler(finder_log)
    level, logger.level = logger.level, logging.DEBUG
    try:
        driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    finally:
        logger.removeHandler(finder_log)
        logger.setLevel(level)
    assert any("Skipping Selenium Manager" in m for m in finder_log.messages), finder_log.messages
    driver.set_page_load_timeout(60)
    driver.login = LoginPrompt(driver, "someone", KEY)
    yield driver
    driver.quit()


class LoginPrompt:
    """Answers chromium's login dialog (an HTTP Basic challenge) with a user name and the key, through the DevTools
    protocol (Fetch.authRequired), as a person typing them in; the browser then holds the login as it would after
    the dialog. `challenges`: the URLs that asked."""

    def __init__(self, driver, username: str, password: str):
        import json
        import threading
        import urllib.request

        import websocket  # websocket-client, a dependency of selenium

        address = driver.capabilities["goog:chromeOptions"]["debuggerAddress"]  # the browser's own DevTools port
        with urllib.request.urlopen(f"http://{address}/json", timeout=30) as resp:
            page = next(t for t in json.load(resp) if t["type"] == "page")
        self._json, self._next_id, self.challenges = json, 0, []
        self._answer = {"response": "ProvideCredentials", "username": username, "password": password}
        self._ws = websocket.create_connection(page["webSocketDebuggerUrl"], suppress_origin=True, timeout=None)
        self._send("Fetch.enable", {"handleAuthRequests": True, "patterns": [{"urlPattern": "*"}]})
        threading.Thread(target=self._serve, daemon=True).start()

    def _send(self, method: str, params: dict) -> None:
        self._next_id += 1
        self._ws.send(self._json.dumps({"id": self._next_id, "method": method, "params": params}))

    def _serve(self) -> None:
        while True:
            try:
                message = self._json.loads(self._ws.recv())
            except Exception:  # noqa: BLE001 - the browser closed
                return
            params = message.get("params", {})
            if message.get("method") == "Fetch.requestPaused":  # every request pauses while Fetch is on: let it go
                self._send("Fetch.continueRequest", {"requestId": params["requestId"]})
            elif message.get("method") == "Fetch.authRequired":
                self.challenges.append(params["request"]["url"])
                self._send("Fetch.continueWithAuth", {"requestId": params["requestId"],
                                                      "authChallengeResponse": self._answer})


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def auth(key=KEY):
    return {"Authorization": f"Bearer {key}"}


def fashion_images(split: str) -> np.ndarray:
    from mrl.data.formats import load_fashion_mnist

    return load_fashion_mnist("/usr/share/datasets/fashion-mnist", split)[0]


# ------------------------------------------------------------------------------------------------ HTTP

def test_items_need_the_key_and_are_the_datasets_images(served):
    url = served["url"]
    for headers in ({}, auth("wrong")):
        resp = requests.get(f"{url}/items/3", headers=headers, timeout=30)
        assert resp.status_code == 401 and "Authorization: Bearer" in resp.json()["detail"]
        assert resp.headers["WWW-Authenticate"] == "Bearer"
    train = fashion_images("train")
    labels = np.load(Path(served["images"]) / "labels.npy")
    for item_id in (0, 3, ROWS - 1):
        resp = requests.get(f"{url}/items/{item_id}", headers=auth(), timeout=30)
        assert resp.status_code == 200 and resp.headers["content-type"] == "image/png"
        pixels = np.asarray(Image.open(io.BytesIO(resp.content)))
        assert np.array_equal(pixels, train[item_id, 0])  # Fashion-MNIST train row `item_id`, as the model saw it
        assert resp.headers["X-Item-Label"] == str(labels[item_id])
    for bad, status, message in ((ROWS, 404, f"id {ROWS} is not in the corpus ({ROWS} items)"),
                                 (-1, 404, "id -1 is not in the corpus"), ("abc", 422, "valid integer")):
        resp = requests.get(f"{url}/items/{bad}", headers=auth(), timeout=30)
        assert resp.status_code == status and message in str(resp.json()["detail"]), resp.text


def test_the_calibration_table_needs_the_key(served):
    url = served["url"]
    assert requests.get(f"{url}/calibration", timeout=30).status_code == 401
    table = requests.get(f"{url}/calibration", headers=auth(), timeout=30).json()
    assert table == read_manifest(served["images"])["calibration"] and len(table["rows"]) >= 4


def test_the_page_needs_the_key_and_carries_no_data(served):
    """With a key the page sits behind it too: GET / asks a browser for it (HTTP Basic, the key as password)."""
    url = served["url"]
    refused = requests.get(f"{url}/", timeout=30)
    assert refused.status_code == 401 and refused.headers["WWW-Authenticate"].startswith("Basic")
    assert requests.get(f"{url}/page/app.js", timeout=30).status_code == 401
    page = requests.get(f"{url}/", auth=("anyone", KEY), timeout=30)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert 'src="page/app.js"' in page.text and served["images"] not in page.text and "image-model" not in page.text
    script = requests.get(f"{url}/page/app.js", headers=auth(), timeout=30)
    assert script.status_code == 200 and "javascript" in script.headers["content-type"]
    resp = requests.get(f"{url}/page/nope.js", headers=auth(), timeout=30)
    assert resp.status_code == 404 and "the page's files are ['app.js', 'index.html', 'style.css']" in resp.text
    for name in ("..%2Fretrieval.py", "../retrieval.py", "%2E%2E/app.py"):  # no path reaches another file
        resp = requests.get(f"{url}/page/{name}", headers=auth(), timeout=30)
        assert resp.status_code == 404 and "RetrievalService" not in resp.text
    text_page = requests.get(f"{url}/text/", timeout=30)  # the text service has no key: its page is open
    assert text_page.status_code == 200 and 'src="page/app.js"' in text_page.text


def test_text_items_are_their_documents(served):
    resp = requests.get(f"{served['url']}/text/items/14", timeout=30)  # the third train row: id 7 * 2
    assert resp.status_code == 200 and resp.json() == {"id": 14, "label": 2, "text": "a cat and a dog near the town"}


# ------------------------------------------------------------------------------------------------ the browser

def wait_until(driver, condition, timeout: float = 60):
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, timeout).until(condition)


def wait_for(driver, state: str, timeout: float = 60):
    """Until the page's status says `state` (or an error, which fails the test with the page's message)."""
    wait_until(driver, lambda d: d.find_element("id", "status").get_attribute("data-state") in (state, "error"),
               timeout)
    status = driver.find_element("id", "status")
    assert status.get_attribute("data-state") == state, status.text


def shown(driver) -> list[int]:
    return [int(card.get_attribute("data-id")) for card in driver.find_elements("css selector", "#results .result")]


def fill(driver, element_id: str, value) -> None:
    field = driver.find_element("id", element_id)
    field.clear()
    field.send_keys(str(value))


def search(driver) -> None:
    driver.find_element("id", "search").click()
    wait_for(driver, "done")


def test_an_image_query_in_the_browser_shows_what_the_api_returns(served, browser, tmp_path):
    from selenium.webdriver.support.ui import Select

    url = served["url"]
    browser.get(f"{url}/")
    wait_for(browser, "ready")  # the browser sent its login with the page's own calls: healthz, calibration
    assert browser.login.challenges == [f"{url}/"]  # it asked once, for the page
    health = requests.get(f"{url}/healthz", headers=auth(), timeout=30).json()
    assert [o.text for o in Select(browser.find_element("id", "mode")).options] == health["modes"]

    query = tmp_path / "query.png"
    Image.fromarray(fashion_images("test")[7, 0]).save(query)  # a held-out image
    browser.find_element("id", "image-file").send_keys(str(query))
    wait_until(browser, lambda d: d.find_element("id", "preview").is_displayed())  # the file was read
    fill(browser, "k", 8)
    Select(browser.find_element("id", "mode")).select_by_value("funnel")
    fill(browser, "shortlist-k", 60)
    search(browser)
    body = {"image": base64.b64encode(query.read_bytes()).decode(), "k": 8, "mode": "funnel", "shortlist_k": 60}
    reply = requests.post(f"{url}/search", json=body, headers=auth(), timeout=30).json()
    assert shown(browser) == reply["ids"] and len(reply["ids"]) == 8
    images = browser.find_elements("css selector", "#results .result img.item")
    assert len(images) == 8 and all(browser.execute_script("return arguments[0].naturalWidth", i) == 28 for i in images)
    assert browser.find_element("id", "plan-text").text.startswith(f"funnel: shortlist 60 from {reply['search']['shortlist']['source']}")
    status = browser.find_element("id", "status")  # the page's timings, read by benchmarks/search_page.py
    assert 0 < float(status.get_attribute("data-search-ms")) <= float(status.get_attribute("data-results-ms"))
    _budget_query(browser, url, body)
    _save_screenshot(browser, tmp_path)


def _budget_query(browser, url, body):
    """The budget slider: the page sends the latency budget the slider shows, and the answer is the plan that
    budget picks, marked on the calibration curve."""
    table = requests.get(f"{url}/calibration", headers=auth(), timeout=30).json()
    latencies = sorted({r["p50_ms"] for r in table["rows"]})
    browser.execute_script("const s = document.getElementById('budget'); s.value = arguments[0];"
                           "s.dispatchEvent(new Event('input'));", len(latencies) - 2)
    assert browser.find_element("id", "plan-budget").is_selected()
    search(browser)
    budget = {k: v for k, v in body.items() if k in ("image", "k")} | {"budget": {"latency_ms": latencies[-2]}}
    reply = requests.post(f"{url}/search", json=budget, headers=auth(), timeout=30).json()
    assert shown(browser) == reply["ids"]
    calibrated = browser.find_element("id", "plan-calibrated").text  # "recall@10 0.912, p50 0.05 ms ..."
    assert calibrated.startswith(f"recall@{table['k']} "), calibrated
    assert float(calibrated.split()[1].rstrip(",")) == pytest.approx(reply["budget"]["calibrated"]["recall"], abs=6e-4)
    assert f"p50 {reply['budget']['calibrated']['p50_ms']} ms" in calibrated
    assert len(browser.find_elements("css selector", "#curve circle.plan-point")) == len(table["rows"])
    assert browser.find_elements("id", "chosen-point")


def _save_screenshot(browser, tmp_path):
    browser.save_screenshot(str(tmp_path / "search_page.png"))
    target = os.environ.get("MRL_SCREENSHOT")
    if target:
        Path(target).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(tmp_path / "search_page.png", target)


def test_a_text_query_and_an_id_query_in_the_browser(served, browser):
    """The text index needs no key: the page goes straight to ready, offers a text box, and shows documents."""
    from selenium.webdriver.support.ui import Select

    url = f"{served['url']}/text"
    browser.get(f"{url}/")
    wait_for(browser, "ready")
    assert browser.find_element("id", "by-text").is_displayed() and not browser.find_element("id", "by-image").is_displayed()
    fill(browser, "text", "a bird and a fish")
    fill(browser, "k", 5)
    Select(browser.find_element("id", "mode")).select_by_value("adaptive")
    search(browser)
    reply = requests.post(f"{url}/search", json={"text": "a bird and a fish", "k": 5, "mode": "adaptive"},
                          timeout=30).json()
    assert shown(browser) == reply["ids"]
    texts = [p.text for p in browser.find_elements("css selector", "#results .result .item-text")]
    assert texts == [requests.get(f"{url}/items/{i}", timeout=30).json()["text"] for i in reply["ids"]]
    browser.find_element("css selector", "input[name=kind][value=id]").click()
    fill(browser, "item-id", 21)
    search(browser)
    assert shown(browser)[0] == 21
