"""Stage synth: render the synthetic KTH-like dataset into data/synthetic."""

from pathlib import Path

from transmodal.data.synth import generate
from transmodal.io import write_json
from transmodal.params import section
from transmodal.stage import run_stage


def main(params: dict) -> None:
    cfg = section(params, "synth")
    summary = generate(Path("data/synthetic"), cfg)
    write_json(summary, "metrics/synth.json")


if __name__ == "__main__":
    run_stage("synth", main)
