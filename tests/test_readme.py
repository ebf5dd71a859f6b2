"""The README's set-up and test commands are exactly what CI runs, so a green CI proves the README."""
import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[1]


def readme_commands():
  text = (ROOT / "README.md").read_text()
  blocks = {}
  for heading in ("Set up", "Test"):
    section = text.split(f"## {heading}\n", 1)[1]
    blocks[heading] = re.search(r"```bash\n(.*?)\n```", section, re.S).group(1).strip()
  return blocks


def test_ci_runs_the_readme_commands():
  commands = readme_commands()
  ci = [line for line in (ROOT / ".ci" / "run").read_text().splitlines() if line and not line.startswith(("#", "set ", "cd "))]
  assert ci == [commands["Set up"], commands["Test"]]


def test_readme_convert_models_exist():
  from convert.registry import CONVERTERS
  text = (ROOT / "README.md").read_text()
  used = set(re.findall(r"python -m convert --model=(\w+)", text))
  assert used and used <= set(CONVERTERS)
