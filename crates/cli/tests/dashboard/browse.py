"""Loads the oxmesh dashboard in Debian's Chromium through Playwright and
prints, as JSON, what a person would see: the graph's nodes and edges (with
their mTLS marks), the proxies' sync column, the findings and the service
drill-down. Waits (bounded) for what the test names with --want.

Usage: browse.py URL SCREENSHOT --chromium PATH [--want-edge SRC DST]...
       [--want-nack] [--select NODE]
"""

import argparse
import json
import sys

from playwright.sync_api import sync_playwright


def main():
    args = parse()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=args.chromium, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(args.url)
        page.wait_for_selector("body[data-loaded=true]", timeout=20_000)
        for source, destination in args.want_edge:
            page.wait_for_selector(
                f'.edge[data-source="{source}"][data-destination="{destination}"]',
                timeout=45_000,
            )
        if args.want_nack:
            page.wait_for_selector('#workloads tr[data-status="NACK"]', timeout=45_000)
        if args.select:
            page.click(f'.node[data-id="{args.select}"]')
            page.wait_for_selector("#detail .chart", timeout=15_000)
        page.screenshot(path=args.screenshot, full_page=True)
        seen = {
            "nodes": page.eval_on_selector_all(".node", "ns => ns.map(n => n.dataset.id)"),
            "edges": page.eval_on_selector_all(
                ".edge",
                """es => es.map(e => ({
                    source: e.dataset.source,
                    destination: e.dataset.destination,
                    mtls: e.dataset.mtls === "true",
                    label: Array.from(e.querySelectorAll("text")).map(t => t.textContent).join(" | "),
                }))""",
            ),
            "workloads": page.eval_on_selector_all(
                "#workloads tbody tr[data-pod]",
                """rs => rs.map(r => ({
                    pod: r.dataset.pod,
                    status: r.dataset.status,
                    text: r.innerText,
                }))""",
            ),
            "findings": page.inner_text("#findings"),
            "detail": page.inner_text("#detail-section"),
        }
        browser.close()
    json.dump(seen, sys.stdout)


def parse():
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("screenshot")
    parser.add_argument("--chromium", required=True)
    parser.add_argument("--want-edge", nargs=2, action="append", default=[])
    parser.add_argument("--want-nack", action="store_true")
    parser.add_argument("--select")
    return parser.parse_args()


if __name__ == "__main__":
    main()
