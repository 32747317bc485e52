"""A small web site served on 127.0.0.1 with the failure modes crawlers meet:
robots.txt rules, 404, 500, a 429 that clears on retry, a slow page, a binary file,
a PDF, page chrome and banners, a near-duplicate page, and a page tests can edit.
Also the small helpers for the other servers tests start on 127.0.0.1."""

from __future__ import annotations

import json
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import httpx

from qaforge.sources.web import serve_on_loopback

CHROME = (
    "<header><a href='/'>Home</a></header>"
    "<nav><a href='/a'>A</a> <a href='/b'>B</a></nav>"
    "<div class='cookie-banner'>We use cookies to improve your visit. Accept all cookies.</div>"
)
FOOTER = "<p>Subscribe to our newsletter for charging tips every month.</p><footer>© Fixture site</footer>"


def page(title: str, body: str, links: str = "") -> bytes:
    return (
        f"<!doctype html><html><head><title>{title}</title></head><body>{CHROME}"
        f"<main><h1>{title}</h1>{body}{links}</main>{FOOTER}</body></html>"
    ).encode()


def paragraphs(*sentences: str) -> str:
    return "".join(f"<p>{s}</p>" for s in sentences)


A_TEXT = (
    "Level 2 charging uses a 208 V or 240 V supply and delivers up to 19.2 kW to the vehicle.",
    "A 32 A Level 2 charger needs a 40 A circuit because continuous loads may use only 80 percent of a breaker rating.",
    "Most home chargers are installed on a dedicated circuit with copper wire sized for the breaker.",
    "A smart charger can schedule charging for off-peak hours and report the energy used in each session.",
    "Hardwired chargers avoid the wear that repeated plugging causes on NEMA 14-50 receptacles.",
)


class FixtureSite:
    def __init__(self, pdf: bytes) -> None:
        self.pdf = pdf
        self.changing_text = "The changing page says the tariff is 30 cents per kilowatt-hour at peak times today."
        self.flaky_hits = 0
        self.requests: list[str] = []
        index_links = "".join(
            f"<a href='{p}'>{p}</a> "
            for p in ["/a", "/b", "/near-dup", "/changing", "/missing", "/error", "/slow", "/flaky",
                      "/file.bin", "/manual.pdf", "/private/secret", "/tiny", "/empty", "https://example.com/elsewhere"]
        )
        self.routes = {
            "/": lambda: (200, "text/html", page("Fixture index", paragraphs(
                "This fixture site is about charging electric vehicles at home and in public places.",
                "Each page below tests one thing a crawler has to handle on a real web site.",
            ), index_links)),
            "/a": lambda: (200, "text/html", page("Home charging circuits", paragraphs(*A_TEXT))),
            "/near-dup": lambda: (200, "text/html", page("Home charging circuits", paragraphs(
                *A_TEXT[:2], A_TEXT[2].replace("dedicated", "separate"), *A_TEXT[3:]
            ))),
            "/b": lambda: (200, "text/html", page("Public charging payment", paragraphs(
                "Public chargers accept payment by app, by RFID card or by contactless credit card.",
                "Idle fees start when a car stays plugged in after its charging session has ended.",
                "Plug and Charge under ISO 15118 lets the car authenticate itself with a certificate.",
            ))),
            "/changing": lambda: (200, "text/html", page("Tariffs", paragraphs(
                self.changing_text, "Off-peak prices are lower at night on most time-of-use tariffs.",
            ))),
            "/flaky": self._flaky,
            "/slow": self._slow,
            "/missing": lambda: (404, "text/html", page("Not found", "<p>No such page.</p>")),
            "/error": lambda: (500, "text/html", b"<h1>Internal Server Error</h1>"),
            "/file.bin": lambda: (200, "application/octet-stream", bytes(range(256)) * 8),
            "/manual.pdf": lambda: (200, "application/pdf", self.pdf),
            "/private/secret": lambda: (200, "text/html", page("Secret", "<p>Never crawled.</p>")),
            "/tiny": lambda: (200, "text/html", page("Tiny", "<p>Short page with little text in it, under the limit.</p>")),
            "/empty": lambda: (200, "text/html", b""),
            "/orphan": lambda: (200, "text/html", page("Orphan page", paragraphs(
                "The orphan page is linked from nowhere and only the sitemap names it.",
                "Sitemaps let a crawler find pages that no other page links to on the site.",
            ))),
            "/robots.txt": lambda: (200, "text/plain", b"User-agent: *\nDisallow: /private/\n"),
            "/sitemap.xml": lambda: (200, "application/xml", (
                b"<?xml version='1.0'?><urlset xmlns='http://www.sitemaps.org/schemas/sitemap/0.9'>"
                + b"".join(f"<url><loc>{self.base}{p}</loc></url>".encode() for p in ["/a", "/orphan"])
                + b"</urlset>"
            )),
        }
        self.base = ""

    def _flaky(self) -> tuple[int, str, bytes]:
        self.flaky_hits += 1
        if self.flaky_hits == 1:
            return 429, "text/html", b"slow down"
        return 200, "text/html", page("Charging speed", paragraphs(
            "DC fast chargers commonly deliver between 50 kW and 350 kW to compatible vehicles.",
            "Charging slows down above about 80 percent state of charge to protect the battery.",
        ))

    def _slow(self) -> tuple[int, str, bytes]:
        time.sleep(3)
        return 200, "text/html", page("Slow", "<p>Too late.</p>")

    @contextmanager
    def serve(self) -> Iterator[str]:
        site = self

        class Handler(QuietHandler):
            def do_GET(self) -> None:
                site.requests.append(self.path)
                route = site.routes.get(self.path.split("?")[0])
                status, content_type, body = route() if route else (404, "text/html", b"not found")
                self.respond(status, content_type, body)

        with serve_on_loopback(Handler) as base:
            self.base = base
            yield base


class QuietHandler(BaseHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass

    def respond(self, status: int, content_type: str, body: bytes) -> None:
        try:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except BrokenPipeError:  # the client gave up first (a timeout test)
            pass


def chat_completion(body: dict, content: str) -> dict:
    """An OpenAI chat.completion reply carrying `content`."""
    return {
        "id": "chatcmpl-test", "object": "chat.completion", "created": 0, "model": body["model"],
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 100, "completion_tokens": 20, "total_tokens": 120},
    }


@contextmanager
def serve_chat(reply: Callable[[dict], tuple[int, dict]]) -> Iterator[str]:
    """An OpenAI-compatible endpoint on 127.0.0.1 whose replies come from `reply(body)`;
    yields the base URL ending in /v1."""

    class Handler(QuietHandler):
        def do_POST(self) -> None:
            assert self.path == "/v1/chat/completions"
            status, payload = reply(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.respond(status, "application/json", json.dumps(payload).encode())

    with serve_on_loopback(Handler) as base:
        yield f"{base}/v1"


@contextmanager
def serve_error(status: int, payload: dict) -> Iterator[str]:
    """A server on 127.0.0.1 that answers every request with `status` and `payload` as
    JSON (a tracking server that refuses or fails); yields its base URL."""

    class Handler(QuietHandler):
        def answer(self) -> None:
            self.respond(status, "application/json", json.dumps(payload).encode())

        do_GET = do_POST = do_PATCH = do_DELETE = answer

    with serve_on_loopback(Handler) as base:
        yield base


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_health(base: str, process: subprocess.Popen, log_path: Path, timeout: float = 180) -> httpx.Response:
    """Poll a server process's open /health until it answers 200; fail with its log
    if the process exits or does not come up in time."""
    deadline = time.monotonic() + timeout
    while True:
        assert process.poll() is None, log_path.read_text()[-5000:]
        try:
            health = httpx.get(f"{base}/health", timeout=2)
            if health.status_code == 200:
                return health
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, f"server did not start:\n{log_path.read_text()[-5000:]}"
        time.sleep(0.5)
