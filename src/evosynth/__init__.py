"""evosynth: evolutionary synthesis of small, fast deep neural networks.

A trained ancestor passes its synapses to offspring with probabilities driven by synaptic
and cluster strength under an environmental factor; each offspring is trained and becomes
the next parent (Shafiee & Wong, arXiv 1609.01360; Shafiee, Barshan & Wong, 1704.02081).
"""

from .api import build, evolve, export_run, load_run, resume, run
from .asktell import Candidate, Synthesis
from .clusters import prunable_layers
from .config import EncodingConfig, EvolutionConfig, RunConfig, TrainConfig, load_config
from .encoding import ClusterEncoding, Encoding, make_encoding, survival_probability
from .errors import UserError
from .evolution import EvolutionResult
from .genome import Genome
from .rundir import RunDir

__all__ = [
    "Candidate",
    "ClusterEncoding",
    "Encoding",
    "EncodingConfig",
    "EvolutionConfig",
    "EvolutionResult",
    "Genome",
    "RunConfig",
    "RunDir",
    "Synthesis",
    "TrainConfig",
    "UserError",
    "build",
    "evolve",
    "export_run",
    "load_config",
    "load_run",
    "make_encoding",
    "prunable_layers",
    "resume",
    "run",
    "survival_probability",
]
__version__ = "0.1.0"
