"""Only job: the wheel carries the card templates. ``model_cards/`` at the top level is their source; they are copied
into the built package as ``hf_efficient_lm/model_cards/`` (hub/cards.py looks there first, then in the checkout)."""

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py


class BuildPyWithCards(build_py):
    def run(self):
        super().run()
        target = Path(self.build_lib) / "hf_efficient_lm" / "model_cards"
        self.mkpath(str(target))
        for template in sorted(Path(__file__).parent.joinpath("model_cards").glob("*.md")):
            self.copy_file(str(template), str(target / template.name))


setup(cmdclass={"build_py": BuildPyWithCards})
