"""The search page in a real browser: time to results for an image query, beside the same query's POST /search.

    python benchmarks/search_page.py [--index outputs/index/latest] [--repeats 10] [--row 0] [--k 10]

Serves the index (serving/serve.yaml's settings; the Encoder loads the index's model from the MLflow store beside
it, <output_dir>/mlflow.db) on a local Ray cluster, opens the page (GET /) in headless chromium (Debian's chromium
and chromium-driver, driven by Selenium through /usr/bin/chromedriver: nothing is downloaded), chooses a held-out
image (row --row of the embed run's test split, as a PNG file) and presses Search --repeats times after one
warm-up, reading from the page the time from the press to every result shown (the search's round trip, then k
GET /items image loads) and the search's round trip alone. The same query and plan go --repeats times (after a
warm-up) to POST /search from Python (requests, one kept-alive connection), with the replica's own took_ms.
Checks that the page shows exactly the ids the API returns. Writes docs/results/search_page.md and .json, and
docs/results/search_page.png: the page after the last query, the README's screenshot.

Run ./quickstart.sh first (or give --index): expect about 40 s (Serve start-up, then the 2 x 11 queries).
"""

import argparse
import base64
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "docs" / "results"
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


def summary(values: list[float]) -> dict[str, float]:
    return {"median_ms": statistics.median(values), "min_ms": min(values), "max_ms": max(values), "n": len(values)}


def query_png(index_manifest: dict, row: int, out: Path) -> Path:
    """Row `row` of the embed run's held-out (test) split, read through its data source, as a PNG file."""
    from mrl.artifacts.manifest import read_manifest
    from mrl.config import DataConfig
    from mrl.configio import from_dict
    from mrl.data.sources import open_split
    from mrl.service.browse import png_bytes

    embed = read_manifest(index_manifest["embeddings"], stage="embed")
    spec = embed["model_spec"]
    shape = (int(spec.get("in_channels", 1)), int(spec.get("image_size", 28)), int(spec.get("image_size", 28)))
    reader = open_split(from_dict(DataConfig, embed["data"], prefix="data."), shape, "test")
    pixels = reader.read(row, row + 1).column("image").combine_chunks().flatten().to_numpy(zero_copy_only=False)
    out.write_bytes(png_bytes(pixels.reshape(shape)))
    return out


def start_service(index: Path, port: int) -> str:
    import ray
    import yaml
    from ray import serve

    from mrl.config import ServeConfig
    from mrl.configio import deep_merge, from_dict
    from mrl.service.app import build_app

    store = index.parent.parent / "mlflow.db"  # <output_dir>/index/<run>: the store beside it holds the model
    if not store.is_file():
        raise SystemExit(f"no MLflow store at {store}: image queries need the index's model from it")
    base = yaml.safe_load((REPO / "serving" / "serve.yaml").read_text())["serve"]
    cfg = from_dict(ServeConfig, deep_merge(base, {"port": port}), "serve.")
    ray.init(address="local", num_cpus=4, include_dashboard=False)
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(build_app(str(index), cfg, f"sqlite:///{store}"), name="mrl", route_prefix="/", blocking=False)
    return f"http://127.0.0.1:{port}"


def open_browser():
    """Headless chromium through the system's chromedriver (Selenium Manager skipped, and offline should it run)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    os.environ["SE_OFFLINE"] = "true"
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1400,1000", "--hide-scrollbars"):
        options.add_argument(arg)
    return webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)


def wait_state(driver, state: str, timeout: float = 120) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    status = driver.find_element("id", "status")
    WebDriverWait(driver, timeout).until(lambda d: status.get_attribute("data-state") in (state, "error"))
    if status.get_attribute("data-state") != state:
        raise RuntimeError(f"the page says: {status.text}")


def page_runs(driver, url: str, png: Path, k: int, repeats: int) -> tuple[list[dict], list[int]]:
    """Open the page, choose the image, and press Search 1 + `repeats` times: the page's timings of each counted
    press, and the ids it showed last."""
    driver.get(f"{url}/")
    wait_state(driver, "ready")
    driver.find_element("id", "image-file").send_keys(str(png))
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, 30).until(lambda d: d.find_element("id", "preview").is_displayed())
    field = driver.find_element("id", "k")
    field.clear()
    field.send_keys(str(k))
    runs = []
    for i in range(repeats + 1):
        driver.execute_script("document.getElementById('status').dataset.state = 'waiting'")
        driver.find_element("id", "search").click()
        wait_state(driver, "done")
        status = driver.find_element("id", "status")
        if i:  # the first press warms the encoder and the page up
            runs.append({"results_ms": float(status.get_attribute("data-results-ms")),
                         "search_ms": float(status.get_attribute("data-search-ms"))})
    shown = [int(c.get_attribute("data-id")) for c in driver.find_elements("css selector", "#results .result")]
    loaded = driver.execute_script("return [...document.querySelectorAll('#results img.item')]"
                                   ".every((i) => i.complete && i.naturalWidth > 0)")
    if not loaded or len(shown) != k:
        raise RuntimeError(f"the page showed {len(shown)} results, images loaded: {loaded}")
    return runs, shown


def api_runs(url: str, body: dict, repeats: int) -> tuple[list[float], list[float], dict]:
    """POST /search 1 + `repeats` times on one connection: client round trips (ms), the replica's took_ms, and the
    last reply."""
    import requests

    session = requests.Session()
    client, took, reply = [], [], None
    for i in range(repeats + 1):
        started = time.perf_counter()
        resp = session.post(f"{url}/search", json=body, timeout=60)
        elapsed = 1000 * (time.perf_counter() - started)
        resp.raise_for_status()
        reply = resp.json()
        if i:
            client.append(elapsed)
            took.append(reply["took_ms"])
    return client, took, reply


def machine() -> str:
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor())
    return f"{os.cpu_count()} cores, {model}"


def chromium_version() -> str:
    done = subprocess.run([CHROMIUM, "--version"], check=False, capture_output=True, text=True, timeout=60)
    return done.stdout.strip()


def report(result: dict) -> str:
    rows = [("page: Search pressed → all k results shown (search + k image loads)", result["page_results"]),
            ("page: the search's round trip (fetch POST /search)", result["page_search"]),
            ("Python: POST /search round trip (requests)", result["api_client"]),
            ("service: took_ms, the search inside the replica (after the Encoder)", result["api_took"])]
    table = "\n".join(f"| {name} | {s['median_ms']:.1f} | {s['min_ms']:.1f} | {s['max_ms']:.1f} |" for name, s in rows)
    return f"""# The search page: time to results in a real browser

`{result['command']}` on {result['date']}, {result['machine']}; {result['chromium']} (headless),
driven by Selenium {result['selenium']} through /usr/bin/chromedriver. The service: serving/serve.yaml's settings
(one Retriever replica, one Encoder) over the index `{result['index']}` ({result['rows']:,} images, d = {result['dim']},
model {result['model']}), on a local Ray cluster on the same machine.

One image query, row {result['row']} of the embed run's held-out (test) split sent as a PNG, k = {result['k']},
mode {result['plan']['mode']} (the plan: {json.dumps(result['plan'])}); {result['repeats']} runs of each after one
warm-up, in ms:

| measure | median | min | max |
|---|---:|---:|---:|
{table}

The page showed exactly the ids POST /search returned for the same query and plan: {result['same_ids']}.
The page's time to results is the search plus {result['k']} GET /items/{{id}} calls (each a PNG read from the
{result['source']} data the index's lineage names), which the browser runs in parallel (6 connections per host).

![the search page](search_page.png)
"""


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--index", default=str(REPO / "outputs" / "index" / "latest"))
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--row", type=int, default=0, help="row of the test split used as the query image")
    parser.add_argument("--k", type=int, default=10)
    args = parser.parse_args(argv)
    import ray
    import selenium
    from ray import serve

    from mrl.artifacts.manifest import read_manifest

    index = Path(args.index).resolve()
    if not (index / "manifest.json").is_file():
        raise SystemExit(f"no index at {args.index}: run ./quickstart.sh first, or give --index")
    manifest = read_manifest(index, stage="index")
    port = 8000 + os.getpid() % 1000
    with tempfile.TemporaryDirectory() as tmp:
        png = query_png(manifest, args.row, Path(tmp) / "query.png")
        url = start_service(index, port)
        driver = open_browser()
        try:
            page, shown = page_runs(driver, url, png, args.k, args.repeats)
            RESULTS.mkdir(parents=True, exist_ok=True)
            driver.save_screenshot(str(RESULTS / "search_page.png"))
            body = {"image": base64.b64encode(png.read_bytes()).decode(), "k": args.k,
                    "mode": driver.find_element("id", "mode").get_attribute("value")}
            client, took, reply = api_runs(url, body, args.repeats)
        finally:
            driver.quit()

            serve.shutdown()
            ray.shutdown()
    source = read_manifest(manifest["embeddings"], stage="embed")["data"]["source"]
    result = {"command": " ".join(["python benchmarks/search_page.py", *argv]), "source": source, "date": time.strftime("%Y-%m-%d"), "machine": machine(), "chromium": chromium_version(),
              "selenium": selenium.__version__, "index": str(index), "rows": manifest["rows"], "dim": manifest["dim"],
              "model": manifest.get("model_uri"), "row": args.row, "k": args.k, "repeats": args.repeats,
              "plan": reply["search"], "same_ids": shown == reply["ids"],
              "page_results": summary([r["results_ms"] for r in page]),
              "page_search": summary([r["search_ms"] for r in page]),
              "api_client": summary(client), "api_took": summary(took)}
    (RESULTS / "search_page.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / "search_page.md").write_text(report(result))
    print(report(result))
    return 0 if result["same_ids"] else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
