# Sphinx configuration of the offline tutorial site. `.ci/docs.py` copies this file beside the notebooks it has run
# through nbdev's doc processors, with `_site.json` (project facts from settings.ini, pages that draw plotly figures).
import json
from pathlib import Path

_site = json.loads((Path(__file__).parent/'_site.json').read_text())
project = _site['title']
author = _site['author']
copyright = _site['copyright']
extensions = ['myst_nb']
root_doc = 'index'
exclude_patterns = ['_build', '**.ipynb_checkpoints']
suppress_warnings = ['myst.header', 'mystnb.unknown_mime_type']

# notebooks are rendered from their stored outputs, never executed here
nb_execution_mode = 'off'
nb_merge_streams = True
myst_enable_extensions = ['dollarmath', 'amsmath', 'colon_fence', 'html_image']
# the JavaScript comes from _static (npm packages pinned in .ci/docs/package.json), never from a CDN
nb_ipywidgets_js = {
    'require.js': {},
    'require-config.js': {},
    'jupyter-widgets/embed-amd.js': {'data-jupyter-widgets-cdn': '_static/jupyter-widgets/cdn/'},
}
mathjax_path = 'mathjax/tex-mml-chtml.js'

html_theme = 'sphinx_book_theme'
html_title = project
html_static_path = ['_static']
html_css_files = ['site.css']
html_show_search_summary = False  # summaries fetch() each page, which file:// forbids
html_context = {'default_mode': 'auto'}  # pydata-sphinx-theme logs an error on an empty mode
html_theme_options = {
    'repository_url': _site['repo'],
    'repository_branch': _site['branch'],
    'use_repository_button': True,
    'home_page_in_toc': True,
    'show_toc_level': 2,
    'navigation_with_keys': False,
}

def _page_js(app, pagename, templatename, context, doctree):
    # plotly.js before require.js, so it sets window.Plotly instead of registering an anonymous AMD module
    if pagename in _site['plotly_pages']: app.add_js_file('plotly.min.js', priority=200)

def setup(app):
    app.connect('html-page-context', _page_js)
