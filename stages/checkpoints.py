"""Stage checkpoints: tiny random-initialised RT-DETR / ViTPose++ / VideoMAE for the offline demo."""

from pathlib import Path

from transmodal.params import ParamError
from transmodal.stage import run_stage
from transmodal.vision.tiny import write_tiny_checkpoints


def main(params: dict) -> None:
    seed = (params.get("tiny") or {}).get("seed")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ParamError(f"params.yaml: tiny.seed is {seed!r}; expected an integer >= 0")
    write_tiny_checkpoints(Path("models/tiny"), seed=seed)


if __name__ == "__main__":
    run_stage("checkpoints", main)
