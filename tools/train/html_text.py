#!/usr/bin/env python3
"""Turn a tree of mdBook HTML pages (the Rust book, reference, nomicon...,
which rustup installs under `share/doc/rust/html`) into plain English text,
one `.txt` per page: the prose of each page's <main>, without code (blocks
and inline spans alike), scripts or navigation. It makes a natural-language corpus for
`train.py --pattern '*.txt'` on a machine without network access.

    python3 tools/train/html_text.py --out /tmp/text-corpus \\
        ~/.rustup/toolchains/stable-*/share/doc/rust/html/{book,reference,nomicon}
"""
import argparse
import html.parser
import re
from pathlib import Path

SKIP = {"pre", "script", "style", "nav", "code"}
BLOCK = {"p", "li", "h1", "h2", "h3", "h4", "h5", "h6", "blockquote", "dt", "dd", "tr", "div", "br"}


class Prose(html.parser.HTMLParser):
    """The text inside <main>, minus SKIP elements (inline `code` too, so a
    sentence that names an item loses the name), a paragraph per block."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.main = 0
        self.skip = 0
        self.parts = []

    def handle_starttag(self, tag, attrs):
        if tag == "main":
            self.main += 1
        elif tag in SKIP:
            self.skip += 1
        elif tag in BLOCK:
            self.parts.append("\n")

    def handle_endtag(self, tag):
        if tag == "main":
            self.main -= 1
        elif tag in SKIP:
            self.skip = max(0, self.skip - 1)
        elif tag in BLOCK:
            self.parts.append("\n")

    def handle_data(self, data):
        if self.main > 0 and self.skip == 0:
            # Source line breaks inside a paragraph are spaces.
            self.parts.append(data.replace("\n", " "))

    def text(self):
        lines = (re.sub(r"[ \t\r\f\v]+", " ", line).strip() for line in "".join(self.parts).split("\n"))
        # Paragraphs of real prose only: a line of a few words is a heading or a table cell.
        return "\n\n".join(line for line in lines if len(line.split()) >= 6)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("roots", nargs="+")
    args = ap.parse_args()
    out = Path(args.out)
    pages = chars = 0
    for root in map(Path, args.roots):
        for page in sorted(root.rglob("*.html")):
            p = Prose()
            p.feed(page.read_text(encoding="utf-8", errors="replace"))
            text = p.text()
            if len(text) < 200:
                continue
            dest = out / root.name / page.relative_to(root).with_suffix(".txt")
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_text(text + "\n", encoding="utf-8")
            pages += 1
            chars += len(text)
    print(f"{pages} pages, {chars / 1e6:.1f}M characters into {out}")


if __name__ == "__main__":
    main()
