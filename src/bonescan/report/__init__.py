"""The offline HTML report of one pipeline run (`bonescan report`): `build.py` reads the stages' outputs and
renders `templates/index.html.j2` with Jinja2 into one self-contained page."""
