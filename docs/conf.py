"""Sphinx configuration of the iris_trio documentation site.

Build it with ``sphinx-build -W -b html docs BUILD_DIR`` (warnings are errors:
a broken reference or a missing example fails the build).
"""

from __future__ import annotations

import iris_trio

project = "iris_trio"
copyright = "the iris_trio authors"
release = iris_trio.__version__
version = release

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinxcontrib_trio",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]

# MyST: heading anchors so that Markdown links such as relay.md#limits-relaylimits
# resolve (and fail the build when a heading they name is gone).
myst_heading_anchors = 3
myst_enable_extensions = ["colon_fence"]

# The API reference comes from the docstrings (Google style: Args, Raises, ...).
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_preserve_defaults = True
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_ivar = True
napoleon_use_rtype = False

# Every cross-reference to a name of iris_trio must resolve: a renamed or
# removed name fails the build. Names of other projects (trio, anyio, the
# standard library) are not linked (the build reads no inventory from the
# network), so they are let through.
nitpicky = True
nitpick_ignore_regex = [
    (r"py:.*", r"(trio|anyio|sniffio|contextlib|collections|typing|os|enum)(\..*)?"),
    (r"py:.*", r"(bytes|str|int|float|bool|None|object|Exception|BaseException|ValueError)"),
    (r"py:.*", r"(TypeError|OSError|TimeoutError|RuntimeError|KeyError)"),
    # Type variables, and the internal layers that appear in signatures (the
    # overlay, transport and wire layers are described in Internals, not in the
    # API reference).
    (r"py:.*", r"(.*\.)?T"),
    (r"py:.*", r"iris_trio\.(overlay|transport|wire|patterns)(\..*)?"),
    # Napoleon reads "a / b: ..." in an Attributes section as a type and a
    # name; a target with a space is never a Python name.
    (r"py:.*", r".*\s.*"),
]

#: Where the public names live, for references written relative to the
#: module that defines them (``:func:`register``` in iris_trio.relay.client
#: means iris_trio.register): tried in order when a reference is not found.
PUBLIC_MODULES = [
    "iris_trio",
    "iris_trio.relay",
    "iris_trio.relay.client",
    "iris_trio.relay.inbox",
    "iris_trio.testing",
    "iris_trio.monitor",
]


def _resolve_public(app, env, node, contnode):  # type: ignore[no-untyped-def]
    """Resolve a Python reference that names a public object by another path."""
    if node.get("refdomain") != "py":
        return None
    target = node["reftarget"].lstrip(".~")
    domain = env.get_domain("py")
    parts = target.split(".")
    for start in range(len(parts)):
        suffix = ".".join(parts[start:])
        for module in PUBLIC_MODULES:
            candidate = f"{module}.{suffix}"
            if candidate == target or candidate not in domain.objects:
                continue
            node["reftarget"] = candidate
            return domain.resolve_xref(
                env, node["refdoc"], app.builder, node["reftype"], candidate, node, contnode
            )
    return None


def setup(app):  # type: ignore[no-untyped-def]
    app.connect("missing-reference", _resolve_public)


html_theme = "furo"
html_title = f"iris_trio {release}"
