"""Generate ``data/sample.warc.gz``: a small web crawl to try the data-curation pipeline on.

    python data/make_sample_warc.py                       # rewrites data/sample.warc.gz
    python data/make_sample_warc.py --out /tmp/sample.warc.gz

The crawl is built from chapters of the shipped public-domain corpus ``data/small_en.txt``, each
page wrapped in the same site boilerplate (navigation menu, cookie banner, newsletter box, footer,
an analytics script), plus records that each filter of ``configs/data/warc_clean.toml`` has a
reason to remove: two exact copies and two near copies of pages, a page with an e-mail address
and a phone number, a short page, a page that is mostly boilerplate, a page of "…" teasers, a
page of insults, a page in French, a JavaScript-only page, a 404, a redirect, a PNG and a
robots.txt, with a request record before every response and a warcinfo record first.

Deterministic: record ids come from `SEED`, dates from `CRAWL_START`, gzip headers carry no time
(warcio's zlib stream), so re-running the script rewrites the same bytes (with the same zlib).
Needs ``warcio`` (a dev dependency: ``pip install -e ".[dev]"``).
"""

from __future__ import annotations

import argparse
import random
import struct
import uuid
import zlib
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from html import escape
from io import BytesIO
from pathlib import Path

from warcio.statusandheaders import StatusAndHeaders
from warcio.warcwriter import WARCWriter

from lmforge.fsutil import atomic_write_bytes

HERE = Path(__file__).resolve().parent
SEED = 20240506
CRAWL_START = datetime(2024, 5, 6, 9, 0, 0, tzinfo=UTC)
EOT = "<|endoftext|>"
PAGE_CHARS = 2500  # paragraphs of a chapter are taken until the page has about this much text
SITE = "https://books.example.org"

# small_en.txt document index -> (book slug, book title); 30 chapters over the four books
BOOKS = [
    ("alice", "Alice's Adventures in Wonderland", [0, 1, 2, 4, 6, 7, 8, 10]),
    ("tom-sawyer", "The Adventures of Tom Sawyer", [13, 14, 15, 17, 19, 22, 25, 33]),
    ("sherlock-holmes", "The Adventures of Sherlock Holmes", [49, 50, 53, 55, 56, 60]),
    ("moby-dick", "Moby-Dick", [61, 62, 64, 70, 75, 88, 101, 121]),
]
EXACT_COPY_OF = 62  # this chapter is also served at two more URLs, byte for byte
NEAR_COPY_OF = 49  # ... and this one twice more with one word changed per paragraph
PII_IN = 17  # this chapter ends with an editor's e-mail address and phone number
NEAR_COPY_WORDS = ["indeed", "quite", "certainly", "rather", "truly", "surely"]

NAV = ["Home", "Books", "Authors", "Collections", "About", "Contact"]
COOKIE_BANNER = ("We use cookies to give you the best experience on our website. By continuing "
                 "to browse the site you agree to our use of cookies.")
NEWSLETTER = ("Sign up for our newsletter to get a new classic chapter in your inbox every "
              "week.")
FOOTER = ["\u00a9 2024 Public Domain Library. All texts are in the public domain.",
          "Privacy policy", "Terms of use", "Accessibility", "Contact us"]
ANALYTICS = ("window.dataLayer = window.dataLayer || [];"
             "function gtag(){dataLayer.push(arguments);}gtag('js', new Date());")

# Written for this file (MIT, like the project): a French recipe blog post.
FRENCH = [
    "Bienvenue sur notre blog de cuisine familiale.",
    "Cette semaine, nous vous proposons une tarte aux pommes à la normande, simple à préparer "
    "et parfaite pour le goûter du dimanche.",
    "Épluchez quatre pommes, coupez-les en fines lamelles et disposez-les sur une pâte brisée "
    "avec un peu de beurre et de sucre.",
    "Faites cuire quarante minutes à four chaud, puis servez la tarte tiède avec une boule de "
    "glace à la vanille.",
]
INSULTS = [  # a "reader reviews" page of abuse: what the harmful filter is for
    "What a load of crap. Whoever put this boring garbage online is a complete idiot.",
    "Shut up, you moron. You clearly never read a single book in your stupid life.",
    "This damn site is useless and the people who run it are a bunch of lazy idiots.",
    "Worst rubbish ever, you dumb clowns. Go to hell and take your crappy books with you.",
]


def chapters(corpus: Path) -> list[str]:
    """The documents of the corpus (``<|endoftext|>``-separated), edge newlines stripped."""
    return [d.strip("\n") for d in corpus.read_text(encoding="utf-8").split(EOT) if d.strip()]


def excerpt(chapter: str) -> tuple[str, list[str]]:
    """(heading, paragraphs): the chapter's first paragraph and those after it up to
    `PAGE_CHARS` characters (at least one)."""
    heading, *paragraphs = [p.strip() for p in chapter.split("\n\n") if p.strip()]
    kept, size = [], 0
    for p in paragraphs:
        if kept and size + len(p) > PAGE_CHARS:
            break
        kept.append(" ".join(p.split()))
        size += len(p)
    return heading, kept


def page(title: str, body: str, *, lang: str = "en") -> bytes:
    """A page of the library site: `body` (HTML) inside the site's boilerplate."""
    nav = "".join(f'<li><a href="/{n.lower()}">{n}</a></li>' for n in NAV)
    footer = "".join(f"<li>{escape(f)}</li>" for f in FOOTER[1:])
    return f"""<!DOCTYPE html>
<html lang="{lang}">
<head>
<meta charset="utf-8">
<title>{escape(title)} | Public Domain Library</title>
<link rel="stylesheet" href="/static/site.css">
<script async src="/static/analytics.js"></script>
<script>{ANALYTICS}</script>
</head>
<body>
<div id="cookie-banner" class="banner"><p>{COOKIE_BANNER}</p>
<button>Accept all</button><button>Reject</button></div>
<header><a class="logo" href="/">Public Domain Library</a>
<nav><ul>{nav}</ul></nav></header>
<main>
{body}
</main>
<aside class="newsletter"><h3>Newsletter</h3><p>{NEWSLETTER}</p>
<form><input type="email" placeholder="Your e-mail"><button>Subscribe</button></form></aside>
<footer><p>{escape(FOOTER[0])}</p><ul>{footer}</ul></footer>
</body>
</html>
""".encode()


def article(heading: str, paragraphs: list[str]) -> str:
    return f"<article><h1>{escape(heading)}</h1>\n" + "\n".join(
        f"<p>{escape(p)}</p>" for p in paragraphs) + "\n</article>"


def near_copy(paragraphs: list[str], rng: random.Random) -> list[str]:
    """`paragraphs` with one word of each replaced: no paragraph is left identical."""
    out = []
    for p in paragraphs:
        words = p.split(" ")
        i = rng.randrange(len(words))
        words[i] = rng.choice([w for w in NEAR_COPY_WORDS if w != words[i]])
        out.append(" ".join(words))
    return out


def png_1x1() -> bytes:
    """A valid 1x1 white PNG."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data)))
    header = struct.pack(">IIBBBBB", 1, 1, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(b"\x00\xff", 9)) + chunk(b"IEND", b""))


def responses(corpus: Path) -> list[tuple[str, int, str, bytes, list[tuple[str, str]]]]:
    """(url, HTTP status, content type, body, extra headers) of every response, in crawl order."""
    docs, rng = chapters(corpus), random.Random(SEED)
    out = []
    for slug, book, indices in BOOKS:
        for number, index in enumerate(indices, 1):
            heading, paragraphs = excerpt(docs[index])
            if index == PII_IN:
                paragraphs = [*paragraphs, "Found a typo in this transcription? Write to the "
                              "editor, Jane Doe, at jane.doe@example.org or call her on "
                              "(212) 555-0147 on weekdays between nine and five."]
            url = f"{SITE}/{slug}/{number:02d}.html"
            html = page(f"{book}: {heading}", article(heading, paragraphs))
            out.append((url, 200, "text/html; charset=utf-8", html, []))
            if index == EXACT_COPY_OF:
                out.append((f"{url}?utm_source=newsletter", 200, "text/html; charset=utf-8",
                            html, []))
                out.append((url.replace("https://", "http://"), 200,
                            "text/html; charset=utf-8", html, []))
            if index == NEAR_COPY_OF:
                for edition in ("print", "mobile"):
                    copy = article(heading, near_copy(paragraphs, rng))
                    out.append((f"{SITE}/{edition}/{slug}/{number:02d}.html", 200,
                                "text/html; charset=utf-8", page(f"{book}: {heading}", copy), []))
        if slug == "tom-sawyer":  # the odd pages, mid-crawl as a crawler would meet them
            out += odd_pages(docs)
    return out


def odd_pages(docs: list[str]) -> list[tuple[str, int, str, bytes, list[tuple[str, str]]]]:
    html = "text/html; charset=utf-8"
    teasers = [excerpt(docs[i])[1][0] for i in (0, 13, 49, 61, 1, 14, 50, 62, 2, 15, 53, 64)]
    teasers = [" ".join(t.split()[:18]).rstrip(",;:.!?") + "\u2026" for t in teasers]
    latest = "<h1>Latest chapters</h1>\n" + "\n".join(f"<p>{escape(t)}</p>" for t in teasers)
    reviews = "<h1>Reader reviews</h1>\n" + "\n".join(
        f'<div class="review"><p>{escape(r)}</p></div>' for r in INSULTS)
    search = ("<h1>Search</h1><p>No books matched \u201charpoon line\u201d. Try another word "
              "or browse the collections.</p>")
    french = "\n".join(f"<p>{escape(s)}</p>" for s in FRENCH)
    parked = (b"<!DOCTYPE html><html><head><title>example.net</title></head><body>"
              b"<h1>This domain is for sale</h1><p>Inquire today.</p></body></html>\n")
    app_shell = (b'<!DOCTYPE html><html><head><meta charset="utf-8"><title>Reader</title>'
                 b'<script src="/static/app.js"></script></head><body><div id="root"></div>'
                 b"<script>window.__STATE__ = {\"user\": null};</script></body></html>\n")
    not_found = page("Page not found", "<h1>Page not found</h1><p>Sorry, that page does not "
                     "exist.</p>")
    return [
        (f"{SITE}/robots.txt", 200, "text/plain", b"User-agent: *\nDisallow: /search\n", []),
        (f"{SITE}/latest.html", 200, html, page("Latest chapters", latest), []),
        (f"{SITE}/reviews.html", 200, html, page("Reader reviews", reviews), []),
        (f"{SITE}/search?q=harpoon+line", 200, html, page("Search", search), []),
        ("https://recettes.example.com/fr/tarte-aux-pommes", 200, html,
         page_fr("Tarte aux pommes à la normande", french), []),
        ("https://example.net/", 200, html, parked, []),
        (f"{SITE}/reader/", 200, html, app_shell, []),
        (f"{SITE}/alice/13.html", 404, html, not_found, []),
        (f"{SITE}/moby", 301, html, b"", [("Location", f"{SITE}/moby-dick/01.html")]),
        (f"{SITE}/static/logo.png", 200, "image/png", png_1x1(), []),
    ]


def page_fr(title: str, body: str) -> bytes:
    """A page of a French site, with its own (French) boilerplate."""
    return f"""<!DOCTYPE html>
<html lang="fr">
<head><meta charset="utf-8"><title>{escape(title)} | Cuisine de Mamie</title>
<script>{ANALYTICS}</script></head>
<body>
<div class="cookies"><p>Nous utilisons des cookies pour améliorer votre expérience. En poursuivant
votre navigation, vous acceptez leur utilisation.</p><button>J'accepte</button></div>
<nav><ul><li>Accueil</li><li>Recettes</li><li>Desserts</li><li>À propos</li></ul></nav>
<main><h1>{escape(title)}</h1>
{body}
</main>
<footer><p>© 2024 Cuisine de Mamie. Tous droits réservés.</p><p>Mentions légales</p></footer>
</body>
</html>
""".encode()


def build(corpus: Path) -> bytes:
    """The gzipped WARC (one gzip member per record) as bytes."""
    ids = random.Random(SEED + 1)

    def record_id() -> str:
        return f"<urn:uuid:{uuid.UUID(int=ids.getrandbits(128), version=4)}>"

    buf = BytesIO()
    writer = WARCWriter(buf, gzip=True, warc_version="1.0")
    info = (b"software: lmforge data/make_sample_warc.py (warcio)\r\n"
            b"format: WARC File Format 1.0\r\n"
            b"description: sample crawl for the lmforge data-curation quick start\r\n")
    writer.write_record(writer.create_warc_record(
        "", "warcinfo", payload=BytesIO(info), length=len(info),
        warc_content_type="application/warc-fields",
        warc_headers_dict={"WARC-Record-ID": record_id(), "WARC-Filename": "sample.warc.gz",
                           "WARC-Date": CRAWL_START.strftime("%Y-%m-%dT%H:%M:%SZ")}))
    for n, (url, status, ctype, body, extra) in enumerate(responses(corpus), 1):
        when = CRAWL_START + timedelta(seconds=7 * n)
        date = when.strftime("%Y-%m-%dT%H:%M:%SZ")
        host = url.split("/")[2]
        path = "/" + url.split("/", 3)[3] if url.count("/") > 2 else "/"
        request = f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: lmforge-sample/1.0\r\n\r\n"
        request_id, response_id = record_id(), record_id()
        writer.write_record(writer.create_warc_record(
            url, "request", payload=BytesIO(request.encode()), length=len(request),
            warc_headers_dict={"WARC-Record-ID": request_id, "WARC-Date": date,
                               "WARC-Concurrent-To": response_id}))
        reason = {200: "OK", 301: "Moved Permanently", 404: "Not Found"}[status]
        headers = [("Date", format_datetime(when, usegmt=True)), ("Server", "nginx"),
                   ("Content-Type", ctype), ("Content-Length", str(len(body))), *extra]
        writer.write_record(writer.create_warc_record(
            url, "response", payload=BytesIO(body), length=len(body),
            http_headers=StatusAndHeaders(f"{status} {reason}", headers, protocol="HTTP/1.1"),
            warc_headers_dict={"WARC-Record-ID": response_id, "WARC-Date": date}))
    return buf.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--corpus", type=Path, default=HERE / "small_en.txt")
    parser.add_argument("--out", type=Path, default=HERE / "sample.warc.gz")
    args = parser.parse_args()
    data = build(args.corpus)
    atomic_write_bytes(args.out, data)
    print(f"wrote {args.out} ({len(data):,} bytes)")


if __name__ == "__main__":
    main()
