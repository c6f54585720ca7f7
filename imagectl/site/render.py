"""Render a :class:`~imagectl.site.model.SiteModel` as static files: ``index.html``, one page per image name, the
JSON feed and the assets. Pure: the same model gives the same bytes (nothing depends on the clock or the host).

Every string from metadata is hostile: it reaches HTML only through :func:`html.escape` (text and attribute
values alike) and a ``<script>`` data block only through :func:`script_json`. The pages load nothing from another
host and run no inline script or style, so a strict Content-Security-Policy holds.
"""

from __future__ import annotations

import html
import importlib.resources
import json
import string
from collections.abc import Iterable
from typing import Any

from imagectl.progress import human_size
from imagectl.site.feed import feed, pull_command
from imagectl.site.model import BuildInfo, MetadataInfo, PackageChanges, SiteImage, SiteModel, SiteName, SiteVersion

__all__ = ["ASSETS", "CSP", "render_site", "script_json"]

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'"
)
ASSETS = ("site.css", "site.js")
STATUSES = ("current", "deprecated", "revoked")
FILTERS = ("os", "release", "arch", "hypervisor", "format", "channel", "status")  # besides the free text, q
_JSON_IN_SCRIPT = {ord("<"): "\\u003c", ord(">"): "\\u003e", ord("&"): "\\u0026", 0x2028: "\\u2028", 0x2029: "\\u2029"}


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def e(value: object) -> str:
    """Text or attribute value for HTML: ``& < > " '`` escaped."""
    return html.escape(str(value), quote=True)


def script_json(data: Any) -> str:
    """``data`` as JSON that is inert inside ``<script type="application/json">``: ``<``, ``>``, ``&`` and the JS
    line separators escaped, so ``</script>`` or ``<!--`` in a string cannot end the block."""
    return json.dumps(data, sort_keys=True, ensure_ascii=False).translate(_JSON_IN_SCRIPT)


def _asset(name: str) -> bytes:
    return importlib.resources.files("imagectl.site").joinpath("assets", name).read_bytes()


def _trust(meta: MetadataInfo) -> str:
    """The freshness line. Static text for readers without JavaScript; site.js recomputes "expires in …" from
    ``data-expires`` when the page is viewed, so a page opened after the expiry turns red by itself."""
    when = meta.expires.replace("T", " ").removesuffix("Z") + " UTC"
    if meta.expired:
        state, text = "expired", f"EXPIRED on {when}: clients refuse this catalogue until it is re-signed"
    else:
        state, text = "ok", f"signed, expires {when}"
    return (
        f'<p id="expiry" class="expiry {state}" data-state="{state}" data-expires="{e(meta.expires)}" '
        f'data-role="{e(meta.expires_role)}"><span class="expiry-text">{e(text)}</span> '
        f'<span class="expiry-detail">metadata version {meta.version} (first to expire: {e(meta.expires_role)})'
        "</span></p>"
    )


def _page(model: SiteModel, title: str, body: str, root: str) -> bytes:
    template = string.Template(_asset("page.html").decode())
    meta = {"catalogue": model.catalogue_url, "expires": model.metadata.expires, "version": model.metadata.version}
    return template.substitute(
        csp=CSP, title=e(title), root=root, trust=_trust(model.metadata), body=body, meta=script_json(meta)
    ).encode()


# -- index ---------------------------------------------------------------------------------------------------
def _row_values(name: SiteName, v: SiteVersion, img: SiteImage | None) -> dict[str, str]:
    if img is None:  # a revoked version: no image left in the signed metadata
        return {"os": "", "release": "", "arch": "", "hypervisor": "", "format": "", "status": "revoked"}
    r = img.record
    return {
        "os": r.os or "",
        "release": f"{r.os} {r.os_version}" if r.os else "",
        "arch": r.arch,
        "hypervisor": r.hypervisor,
        "format": r.format,
        "status": "revoked" if v.revoked is not None else img.status,
    }


def _row(name: SiteName, v: SiteVersion, img: SiteImage | None) -> str:
    """One row of the index. Filter values are data attributes (site.js reads them once); end tags of cells and
    rows are left out, as HTML allows: at 10,000 rows every byte is parse time in the browser."""
    vals = _row_values(name, v, img)
    page = f"images/{e(name.name)}.html"
    attrs = "".join(f' data-{k}="{e(val)}"' for k, val in vals.items() if k != "os")  # os: release's first word
    chans = " ".join(v.channels)
    cells = [f'<a href="{page}">{e(name.name)}</a>', f'<a href="{page}#v-{e(v.version)}">{e(v.version)}</a>']
    if img is None:
        cells += ["—"] * 5 + [e((v.revoked or {}).get("at", ""))]
    else:
        r = img.record
        cells += [e(r.arch), e(vals["release"] or "—"), e(r.hypervisor), e(r.format), e(human_size(r.size))]
        cells.append(e(r.created))
    cells += [e(chans), f'<span class="status s-{vals["status"]}">{vals["status"]}</span>']
    q = e(f"{name.name} {v.version}".lower())
    return f'<tr data-q="{q}" data-channels=" {e(chans)} "{attrs}><td>' + "<td>".join(cells)


def _options(label: str, key: str, values: Iterable[str]) -> str:
    opts = "".join(f'<option value="{e(v)}">{e(v)}</option>' for v in sorted(set(values) - {""}))
    return (
        f'<div class="field"><label for="f-{key}">{e(label)}</label>'
        f'<select id="f-{key}" name="{key}"><option value="">any</option>{opts}</select></div>'
    )


def _index(model: SiteModel) -> str:
    rows: list[str] = []
    seen: dict[str, set[str]] = {k: set() for k in FILTERS}
    images = revoked = 0
    for name in model.names:
        for v in name.versions:
            seen["channel"].update(v.channels)
            for img in v.images or (None,):
                for k, val in _row_values(name, v, img).items():
                    seen[k].add(val)
                rows.append(_row(name, v, img))
                images += img is not None
            revoked += v.revoked is not None
    seen["status"] = set(STATUSES)
    labels = dict(zip(FILTERS, ("OS", "Release", "Arch", "Hypervisor", "Format", "Channel", "Status"), strict=True))
    head = "".join(
        f'<th scope="col">{h}</th>'
        for h in ("Name", "Version", "Arch", "OS", "Hypervisor", "Format", "Size", "Created", "Channels", "Status")
    )
    return (
        "<h1>Images</h1>\n"
        f'<p class="summary">{_count(len(model.names), "name")}, {_count(images, "image")}, '
        f"{_count(revoked, 'revoked version')}. "
        f"Catalogue: <code>{e(model.catalogue_url)}</code></p>\n"
        '<form id="filters" class="filters" role="search" aria-label="Filter images" hidden>'
        '<div class="field wide"><label for="f-q">Search</label>'
        '<input id="f-q" name="q" type="search" autocomplete="off" placeholder="name, version, OS…"></div>'
        + "".join(_options(labels[k], k, seen[k]) for k in FILTERS)
        + '<div class="field"><button type="reset" id="f-reset">Clear filters</button></div></form>\n'
        f'<p id="count" class="count" aria-live="polite">{images + revoked} rows</p>\n'
        f'<table id="images" class="images"><thead><tr>{head}</tr></thead>\n<tbody>\n'
        + "\n".join(rows)
        + "\n</tbody></table>\n"
        '<p id="none" class="none" hidden>No image matches these filters.</p>'
    )


# -- one name ------------------------------------------------------------------------------------------------
def _facts(pairs: Iterable[tuple[str, str]]) -> str:
    return '<dl class="facts">' + "".join(f"<dt>{e(k)}</dt><dd>{v}</dd>" for k, v in pairs) + "</dl>"


def _build(build: BuildInfo | None) -> str:
    if build is None:
        return '<p class="note">No build record: this image was published without one.</p>'
    s = build.summary
    keys = ("sha256", "size", "build_key", "started", "finished", "dib_version", "packages")
    facts = _facts((k, f"<code>{e(s[k])}</code>") for k in keys if k in s)
    if build.packages is None:
        return facts + f'<p class="note">Package list not shown: the build record {e(build.problem or "")}.</p>'
    rows = "".join(f"<tr><td>{e(p.name)}</td><td>{e(p.version)}</td><td>{e(p.arch)}</td></tr>" for p in build.packages)
    return (
        facts + f"<details><summary>Packages ({len(build.packages)})</summary>"
        '<table class="packages"><thead><tr><th scope="col">Package</th><th scope="col">Version</th>'
        f'<th scope="col">Arch</th></tr></thead><tbody>{rows}</tbody></table></details>'
    )


def _changes(img: SiteImage) -> str:
    c: PackageChanges | None = img.changes
    if c is None:
        return f'<p class="note">Package changes: {e(img.no_changes_because)}.</p>' if img.no_changes_because else ""
    if c.empty:
        return f'<p class="note">Packages unchanged since {e(c.against)}.</p>'
    items = [f'<li class="added">+ {e(p.name)} {e(p.version)} {e(p.arch)}</li>' for p in c.added]
    items += [f'<li class="removed">− {e(p.name)} {e(p.version)} {e(p.arch)}</li>' for p in c.removed]
    items += [f'<li class="changed">{e(a.name)} {e(a.version)} → {e(b.version)} {e(b.arch)}</li>' for a, b in c.changed]
    return (
        f"<details open><summary>Changes since {e(c.against)}: {len(c.added)} added, {len(c.removed)} removed, "
        f'{len(c.changed)} changed</summary><ul class="changes">{"".join(items)}</ul></details>'
    )


def _image(model: SiteModel, img: SiteImage) -> str:
    r = img.record
    cmd = pull_command(model, r)
    ident = f"pull-{r.version}-{r.arch}"
    facts = [
        ("sha256", f"<code>{e(r.sha256)}</code>"),
        ("size", f"{e(human_size(r.size))} ({r.size} bytes)"),
        ("created", e(r.created)),
        ("OS", e(f"{r.os} {r.os_version}" if r.os else "not given")),
        ("hypervisor", e(r.hypervisor)),
        ("format", e(r.format)),
    ]
    if r.recipe_digest:
        facts.append(("recipe", f"<code>{e(r.recipe_digest)}</code>"))
    if r.parent:
        facts.append(("parent", e(r.parent)))
    dep = ""
    if r.deprecated:
        dep = (
            f'<p class="deprecated">Deprecated on {e(r.deprecated.get("at", "?"))}: '
            f"{e(r.deprecated.get('reason') or 'no reason given')}. Still pullable by version, with a warning.</p>"
        )
    return (
        f'<article class="image s-{img.status}"><h3>{e(r.arch)} · {e(r.format)} · {e(r.hypervisor)}</h3>{dep}'
        f'<div class="pull"><p class="pull-label" id="{e(ident)}-l">Pull this image:</p>'
        f'<pre aria-labelledby="{e(ident)}-l"><code id="{e(ident)}">{e(cmd)}</code></pre>'
        f'<button type="button" class="copy" data-copy="{e(ident)}" hidden>Copy command</button></div>'
        + _facts(facts)
        + "<h4>Build record</h4>"
        + _build(img.build)
        + _changes(img)
        + "</article>"
    )


def _version(model: SiteModel, v: SiteVersion) -> str:
    chans = "".join(f' <span class="chan">{e(c)}</span>' for c in v.channels)
    out = (
        f'<section class="version s-{v.status}" id="v-{e(v.version)}" aria-labelledby="h-{e(v.version)}">'
        f'<h2 id="h-{e(v.version)}">{e(v.version)} <span class="status s-{v.status}">{v.status}</span>{chans}</h2>'
    )
    if v.revoked is not None:
        digests = v.revoked.get("sha256")
        out += (
            f'<p class="revoked">Revoked on {e(v.revoked.get("at", "?"))}: '
            f'<span class="reason">{e(v.revoked.get("reason", ""))}</span></p>'
            '<p class="note">Its images are gone from the signed metadata; <code>imagectl pull</code> refuses it.'
            + (
                " Removed image sha256: " + ", ".join(f"<code>{e(d)}</code>" for d in digests)
                if isinstance(digests, list)
                else ""
            )
            + "</p>"
        )
    return out + "".join(_image(model, img) for img in v.images) + "</section>"


def _name_page(model: SiteModel, name: SiteName) -> str:
    chans = ", ".join(
        f'<span class="chan">{e(c)}</span> → {e(p.get("version", "?"))} (since {e(p.get("updated", "?"))})'
        for c, p in sorted(name.channels.items())
        if isinstance(p, dict)
    )
    return (
        '<nav class="crumbs" aria-label="Breadcrumb"><a href="../index.html">All images</a></nav>\n'
        f"<h1>{e(name.name)}</h1>\n<p>Channels: {chans or 'none'}. Versions, newest first:</p>\n"
        + "\n".join(_version(model, v) for v in name.versions)
    )


def render_site(model: SiteModel) -> dict[str, bytes]:
    """Every file of the site, by relative path. Deterministic: the same model gives the same bytes."""
    files = {
        "index.html": _page(model, "Images", _index(model), ""),
        "index.json": (json.dumps(feed(model), sort_keys=True, separators=(",", ":")) + "\n").encode(),
    }
    for name in model.names:
        files[f"images/{name.name}.html"] = _page(model, name.name, _name_page(model, name), "../")
    for asset in ASSETS:
        files[f"assets/{asset}"] = _asset(asset)
    return files
