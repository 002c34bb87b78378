"""mmotif: MaestroMotif-style hierarchical NetHack agents on Ray."""

__version__ = "0.1.0"
