"""MkDocs hook: the config-key page is generated from the code when the site is built."""

MARKER = "<!-- config-reference -->"


def on_page_markdown(markdown, page, config, files):
    if MARKER not in markdown:
        return markdown
    from bench.keys import reference_markdown

    return markdown.replace(MARKER, reference_markdown())
