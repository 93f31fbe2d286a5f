"""Write README.md from nbs/index.ipynb (what `nbdev_readme` does, without needing Quarto).
`python .ci/readme.py` writes it; `python .ci/readme.py --check` exits 1 when README.md is out of date."""
import json, re, sys
from pathlib import Path

root = Path(__file__).resolve().parents[1]

def render(nb:dict) -> str:
    parts = []
    for cell in nb['cells']:
        src = ''.join(cell['source']).strip()
        if not src or src.startswith('#| hide'): continue
        if cell['cell_type'] == 'markdown':
            src = re.sub(r'^> (.*)$', r'> \1', src, flags=re.M)
            parts.append(src)
        else:
            code = '\n'.join(l for l in src.splitlines() if not l.startswith('#|'))
            parts.append(f'```python\n{code}\n```')
            for out in cell.get('outputs', []):
                text = ''.join(out.get('text', '') or out.get('data', {}).get('text/plain', ''))
                if text.strip(): parts.append(f'```\n{text.rstrip()}\n```')
    note = '<!-- Generated from nbs/index.ipynb by .ci/readme.py: edit the notebook, not this file. -->'
    return note + '\n\n' + '\n\n'.join(parts) + '\n'

if __name__ == '__main__':
    text = render(json.loads((root/'nbs'/'index.ipynb').read_text()))
    readme = root/'README.md'
    if '--check' in sys.argv:
        if not readme.exists() or readme.read_text() != text:
            sys.exit('README.md is out of date with nbs/index.ipynb: run `python .ci/readme.py`.')
    else:
        readme.write_text(text)
