"""``RUN_DIR/final``: the trained actor at the end of every completed run, and its HF export.

``final/`` is this project's checkpoint format (``common/weights/convert.py``: ``meta.json``, ``arch.json``,
one ``model_tp{t}_pp{p}.safetensors`` per actor rank, plus the source ``hf_config.json`` when the
actor was loaded from a HF model), written to a temporary sibling and renamed, so it either exists
complete or not at all. Every ``*.load=`` key and ``tools.convert_checkpoint mcore-to-hf`` take it.
Weights only: optimizer state lives in ``checkpoints/`` (``training.save_interval``) for resuming.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from common.cluster.handles import ActorHandle

FINAL = "final"


def save_final(actor: ActorHandle, run_dir: Path, export_hf: str | None, tokenizer_dir: str) -> Path:
    """Write ``run_dir/final`` from the actor's training ranks; with ``export_hf`` also a HF folder
    (tokenizer files and chat template copied from ``tokenizer_dir``). Returns the final folder."""
    final = Path(run_dir) / FINAL
    actor.save_weights(str(final))
    if export_hf is not None:
        from common.weights.convert import export_hf as export

        export(final, export_hf, tokenizer_dir)
        print(f"exported the trained actor as a Hugging Face model: {export_hf}", flush=True)
    return final
